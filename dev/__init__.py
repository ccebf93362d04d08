"""Development tooling that never ships: the local Kafka broker script and the real-broker test harness."""

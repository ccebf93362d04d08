"""Delivery: the consumer loop and everything that decides when a record is done and its offset committed."""

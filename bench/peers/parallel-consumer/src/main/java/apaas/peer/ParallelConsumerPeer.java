package apaas.peer;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.StreamReadFeature;
import com.fasterxml.jackson.core.json.JsonWriteFeature;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import io.confluent.parallelconsumer.ParallelConsumerOptions;
import io.confluent.parallelconsumer.ParallelConsumerOptions.CommitMode;
import io.confluent.parallelconsumer.ParallelConsumerOptions.ProcessingOrder;
import io.confluent.parallelconsumer.ParallelStreamProcessor;
import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.File;
import java.io.IOException;
import java.io.InputStreamReader;
import java.math.BigInteger;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Base64;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericDatumReader;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.io.BinaryDecoder;
import org.apache.avro.io.DecoderFactory;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerInterceptor;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.StringDeserializer;

/**
 * The benchmark's Java peer (issue 14): erp-sync's job written the way a Java team would, with
 * Confluent Parallel Consumer.
 *
 * <p>Parallel Consumer (key order, {@code --max-concurrency} records in flight, its default commit
 * mode: periodic asynchronous consumer commits) reads the topic as its own group from the
 * beginning; each record is decoded with Apache Avro's generic reader (the v1 schema), non-APPROVED
 * records are skipped, the ERP body is written with Jackson and POSTed with {@code java.net.http},
 * and the verdict is read from the body (Tencent Cloud API 3.0 style) like erp-sync does: accepted
 * without {@code Response.Error.Code}; retry codes, 408/425/429/5xx, a body outside the contract and
 * transport errors are retried (Parallel Consumer retries a record whose function threw); any other
 * code is a reject (counted and logged; this peer has no dead-letter topic).
 *
 * <p>It exits when it has finished {@code --expect-records} records, or when no record finished for
 * {@code --idle-exit-s} seconds after the first one, closes Parallel Consumer (which commits what is
 * finished) and prints one JSON line: records, pushes, seconds and the rest.
 *
 * <p>{@code --transform}: no Kafka, no HTTP; reads base64 Avro records, one a line, from stdin and
 * writes for each the ERP body, or {@code SKIP}, or {@code INVALID <code>} (the byte-for-byte check
 * against erp-sync's transform).
 */
public final class ParallelConsumerPeer {

    static final List<String> RETRY_CODES = List.of(
            "InternalError", "RequestLimitExceeded", "ResourceUnavailable", "ResourceInsufficient",
            "ServiceUnavailable", "AuthFailure", "UnauthorizedOperation", "IpNotInWhitelist");

    /** Bodies byte for byte like erp-sync's (orjson): control characters as lower-case {@code \u001f}. */
    static final JsonFactory JSON = JsonFactory.builder()
            .disable(JsonWriteFeature.WRITE_HEX_UPPER_CASE)
            // orjson writes characters beyond the BMP as 4 UTF-8 bytes; Jackson escapes them by default
            .enable(JsonWriteFeature.COMBINE_UNICODE_SURROGATES_IN_UTF8)
            .enable(StreamReadFeature.STRICT_DUPLICATE_DETECTION)
            // erp-sync keeps numbers of any length exactly; Jackson stops at 1,000 digits by default
            .streamReadConstraints(StreamReadConstraints.builder().maxNumberLength(Integer.MAX_VALUE).build())
            .build();
    static final ObjectMapper MAPPER = new ObjectMapper();

    final Schema schema;
    final ThreadLocal<GenericDatumReader<GenericRecord>> readers;

    final AtomicLong finished = new AtomicLong();
    final AtomicLong skipped = new AtomicLong();
    final AtomicLong accepted = new AtomicLong();
    final AtomicLong rejected = new AtomicLong();
    final AtomicLong invalid = new AtomicLong();
    final AtomicLong retries = new AtomicLong();
    final AtomicLong requests = new AtomicLong();
    final AtomicLong firstRecordMs = new AtomicLong();
    final AtomicLong lastFinishedMs = new AtomicLong();

    HttpClient http;
    URI url;
    Duration requestTimeout;

    ParallelConsumerPeer(Schema schema) {
        this.schema = schema;
        // Avro's generic reader builds maps as HashMaps; the ERP body keeps the order of the event's
        // variables (as erp-sync does), so maps are read into LinkedHashMaps.
        this.readers = ThreadLocal.withInitial(() -> new GenericDatumReader<>(schema) {
            @Override
            protected Object newMap(Object old, int size) {
                return new LinkedHashMap<>(Math.max(16, size * 2));
            }
        });
    }

    /** A variable's value that breaks decision 4 (type mismatch, not JSON, out of range). */
    static final class InvalidValue extends Exception {
        final String code;

        InvalidValue(String code, String message) {
            super(message);
            this.code = code;
        }
    }

    /** Thrown from the record function: Parallel Consumer retries the record later. */
    static final class RetryLater extends RuntimeException {
        RetryLater(String message) {
            super(message, null, false, false);
        }
    }

    // ------------------------------------------------------------------------------------ decode

    GenericRecord decode(byte[] value) throws IOException {
        BinaryDecoder decoder = DecoderFactory.get().binaryDecoder(value, null);
        GenericRecord record = readers.get().read(null, decoder);
        if (!decoder.isEnd()) {
            throw new IOException("trailing bytes after the record");
        }
        return record;
    }

    static boolean isPushed(GenericRecord event) {
        return "APPROVED".equals(String.valueOf(event.get("status")));
    }

    static String idempotencyKey(GenericRecord event) {
        return event.get("flow_code") + "-" + event.get("instance_id");
    }

    // ------------------------------------------------------------------------------------ transform

    /** The ERP body (README "Mapping"), compact UTF-8 JSON, keys in the spec's order, numbers exact. */
    static byte[] erpBody(GenericRecord event) throws IOException, InvalidValue {
        ByteArrayOutputStream out = new ByteArrayOutputStream(512);
        try (JsonGenerator g = JSON.createGenerator(out)) {
            g.writeStartObject();
            g.writeNumberField("FlowCode", (Long) event.get("flow_code"));
            g.writeNumberField("InstanceId", (Long) event.get("instance_id"));
            Object start = event.get("start_time");
            if (start != null) {
                g.writeNumberField("StartTime", (Long) start);
            }
            g.writeNumberField("EndTime", (Long) event.get("end_time"));
            GenericRecord user = (GenericRecord) event.get("start_user");
            g.writeObjectFieldStart("StartUser");
            g.writeStringField("SourceUid", user.get("source_uid").toString());
            g.writeStringField("TenantUid", user.get("tenant_uid").toString());
            g.writeEndObject();
            @SuppressWarnings("unchecked")
            Map<Object, GenericRecord> variables = (Map<Object, GenericRecord>) event.get("variables");
            if (variables != null && !variables.isEmpty()) {
                g.writeObjectFieldStart("VariableInfos");
                for (Map.Entry<Object, GenericRecord> entry : variables.entrySet()) {
                    String name = entry.getKey().toString();
                    String type = entry.getValue().get("type").toString();
                    String text = entry.getValue().get("value").toString();
                    g.writeObjectFieldStart(name);
                    g.writeStringField("Type", type);
                    g.writeFieldName("Value");
                    writeValue(name, type, text, g);
                    g.writeEndObject();
                }
                g.writeEndObject();
            }
            g.writeEndObject();
        }
        return out.toByteArray();
    }

    static final BigInteger INT32_MIN = BigInteger.valueOf(Integer.MIN_VALUE);
    static final BigInteger INT32_MAX = BigInteger.valueOf(Integer.MAX_VALUE);
    static final BigInteger INT64_MIN = BigInteger.valueOf(Long.MIN_VALUE);
    static final BigInteger INT64_MAX = BigInteger.valueOf(Long.MAX_VALUE);

    /**
     * Parse a variable's JSON text, check it against its Type and copy it to the body: numbers as
     * their exact text ({@code 1.10} stays {@code 1.10}), strings re-escaped, duplicate keys refused.
     */
    static void writeValue(String name, String type, String text, JsonGenerator g) throws IOException, InvalidValue {
        try (JsonParser p = JSON.createParser(text)) {
            JsonToken first = p.nextToken();
            if (first == null) {
                throw new InvalidValue("InvalidJson", "variable " + name + ": empty value");
            }
            if (first != JsonToken.VALUE_NULL) {
                checkType(name, type, first, p);
            }
            copy(p, g, type.equals("objectList"));
            if (p.nextToken() != null) {
                throw new InvalidValue("InvalidJson", "variable " + name + ": trailing data");
            }
        } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
            throw new InvalidValue("InvalidJson", "variable " + name + ": value is not JSON: " + e.getOriginalMessage());
        }
    }

    static void checkType(String name, String type, JsonToken first, JsonParser p) throws IOException, InvalidValue {
        boolean ok;
        switch (type) {
            case "object" -> ok = first == JsonToken.START_OBJECT;
            case "objectList" -> ok = first == JsonToken.START_ARRAY; // elements checked while copying
            case "boolean" -> ok = first == JsonToken.VALUE_TRUE || first == JsonToken.VALUE_FALSE;
            case "string" -> ok = first == JsonToken.VALUE_STRING;
            case "jsonSchema" -> ok = first == JsonToken.START_OBJECT || first == JsonToken.START_ARRAY;
            case "integer", "long" -> {
                ok = first == JsonToken.VALUE_NUMBER_INT;
                if (ok) {
                    BigInteger v = new BigInteger(p.getText());
                    boolean small = type.equals("integer");
                    if (v.compareTo(small ? INT32_MIN : INT64_MIN) < 0 || v.compareTo(small ? INT32_MAX : INT64_MAX) > 0) {
                        throw new InvalidValue("OutOfRange", "variable " + name + ": outside the " + type + " range");
                    }
                }
            }
            case "double" -> {
                ok = first == JsonToken.VALUE_NUMBER_INT || first == JsonToken.VALUE_NUMBER_FLOAT;
                if (ok && !Double.isFinite(Double.parseDouble(p.getText()))) {
                    throw new InvalidValue("OutOfRange", "variable " + name + ": not a finite double");
                }
            }
            default -> throw new InvalidValue("UnknownType", "variable " + name + ": unknown Type " + type);
        }
        if (!ok) {
            throw new InvalidValue("TypeMismatch", "variable " + name + ": Type is " + type + " but Value is " + first);
        }
    }

    /** Copy the current value (and its children) token by token. */
    static void copy(JsonParser p, JsonGenerator g, boolean objectList) throws IOException, InvalidValue {
        int depth = 0;
        JsonToken t = p.currentToken();
        while (true) {
            if (objectList && depth == 1 && t != JsonToken.END_ARRAY && t != JsonToken.START_OBJECT) {
                throw new InvalidValue("TypeMismatch", "objectList with a non-object element");
            }
            switch (t) {
                case START_OBJECT -> { g.writeStartObject(); depth++; }
                case END_OBJECT -> { g.writeEndObject(); depth--; }
                case START_ARRAY -> { g.writeStartArray(); depth++; }
                case END_ARRAY -> { g.writeEndArray(); depth--; }
                case FIELD_NAME -> g.writeFieldName(p.currentName());
                case VALUE_STRING -> g.writeString(p.getText());
                case VALUE_NUMBER_INT, VALUE_NUMBER_FLOAT -> g.writeNumber(p.getText()); // the exact text
                case VALUE_TRUE -> g.writeBoolean(true);
                case VALUE_FALSE -> g.writeBoolean(false);
                case VALUE_NULL -> g.writeNull();
                default -> throw new InvalidValue("InvalidJson", "unexpected token " + t);
            }
            if (depth == 0) {
                return;
            }
            t = p.nextToken();
            if (t == null) {
                throw new InvalidValue("InvalidJson", "unexpected end of the value");
            }
        }
    }

    // ------------------------------------------------------------------------------------ verdict

    enum Outcome { ACCEPTED, RETRY, REJECT }

    record Verdict(Outcome outcome, String code) {}

    static boolean codeMatches(String code, List<String> entries) {
        for (String e : entries) {
            if (code.equals(e) || code.startsWith(e + ".")) {
                return true;
            }
        }
        return false;
    }

    /** The verdict from status and body, as erp-sync's consumer/erp/verdict.py decides it (no duplicate list). */
    static Verdict verdict(int status, byte[] body) {
        if (status < 200 || status >= 300) {
            boolean retry = status == 408 || status == 425 || status == 429 || (status >= 500 && status < 600);
            return new Verdict(retry ? Outcome.RETRY : Outcome.REJECT, "HTTP_" + status);
        }
        JsonNode doc;
        try {
            doc = MAPPER.readTree(body);
        } catch (IOException e) {
            return new Verdict(Outcome.RETRY, "InvalidResponse");
        }
        JsonNode response = doc == null ? null : doc.get("Response");
        if (response == null || !response.isObject()) {
            return new Verdict(Outcome.RETRY, "InvalidResponse");
        }
        JsonNode error = response.get("Error");
        if (error == null || error.isNull()) {
            return new Verdict(Outcome.ACCEPTED, "OK");
        }
        if (!error.isObject()) {
            return new Verdict(Outcome.RETRY, "InvalidResponse");
        }
        JsonNode code = error.get("Code");
        if (code == null || code.isNull() || (code.isTextual() && code.asText().isEmpty())) {
            return new Verdict(Outcome.ACCEPTED, "OK");
        }
        if (!code.isTextual()) {
            return new Verdict(Outcome.RETRY, "InvalidResponse");
        }
        String c = code.asText();
        return new Verdict(codeMatches(c, RETRY_CODES) ? Outcome.RETRY : Outcome.REJECT, c);
    }

    // ------------------------------------------------------------------------------------ the record function

    void handle(ConsumerRecord<String, byte[]> record) {
        long now = System.currentTimeMillis();
        firstRecordMs.compareAndSet(0, now);
        GenericRecord event;
        try {
            event = decode(record.value());
        } catch (IOException | RuntimeException e) {
            invalid.incrementAndGet();
            System.err.println("peer: undecodable record at " + record.topic() + "-" + record.partition() + "@"
                    + record.offset() + ": " + e);
            done();
            return;
        }
        if (!isPushed(event)) {
            skipped.incrementAndGet();
            done();
            return;
        }
        byte[] body;
        try {
            body = erpBody(event);
        } catch (InvalidValue e) {
            invalid.incrementAndGet();
            System.err.println("peer: invalid record at " + record.partition() + "@" + record.offset() + ": "
                    + e.code + " " + e.getMessage());
            done();
            return;
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        HttpRequest request = HttpRequest.newBuilder(url)
                .timeout(requestTimeout)
                .header("Content-Type", "application/json; charset=utf-8")
                .header("Idempotency-Key", idempotencyKey(event))
                .POST(HttpRequest.BodyPublishers.ofByteArray(body))
                .build();
        requests.incrementAndGet();
        HttpResponse<byte[]> response;
        try {
            response = http.send(request, HttpResponse.BodyHandlers.ofByteArray());
        } catch (IOException e) {
            retries.incrementAndGet();
            throw new RetryLater("transport: " + e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new RetryLater("interrupted");
        }
        Verdict v = verdict(response.statusCode(), response.body());
        switch (v.outcome()) {
            case ACCEPTED -> accepted.incrementAndGet();
            case REJECT -> {
                rejected.incrementAndGet();
                System.err.println("peer: ERP rejected " + record.partition() + "@" + record.offset() + ": " + v.code());
            }
            case RETRY -> {
                retries.incrementAndGet();
                throw new RetryLater("ERP: " + v.code());
            }
        }
        done();
    }

    void done() {
        finished.incrementAndGet();
        lastFinishedMs.set(System.currentTimeMillis());
    }

    // ------------------------------------------------------------------------------------ commits

    /** Counts the commits the broker acknowledged (registered as the consumer's interceptor). */
    public static final class CommitCounter implements ConsumerInterceptor<Object, Object> {
        static final AtomicLong COMMITS = new AtomicLong();

        @Override
        public ConsumerRecords<Object, Object> onConsume(ConsumerRecords<Object, Object> records) {
            return records;
        }

        @Override
        public void onCommit(Map<TopicPartition, OffsetAndMetadata> offsets) {
            COMMITS.incrementAndGet();
        }

        @Override
        public void close() {
        }

        @Override
        public void configure(Map<String, ?> configs) {
        }
    }

    // ------------------------------------------------------------------------------------ main

    static Map<String, String> parseArgs(String[] args) {
        Map<String, String> out = new HashMap<>();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            if (!a.startsWith("--")) {
                throw new IllegalArgumentException("unexpected argument " + a);
            }
            if (a.equals("--transform")) {
                out.put("transform", "true");
            } else if (i + 1 < args.length) {
                out.put(a.substring(2), args[++i]);
            } else {
                throw new IllegalArgumentException(a + " needs a value");
            }
        }
        return out;
    }

    static String need(Map<String, String> opts, String name) {
        String v = opts.get(name);
        if (v == null) {
            throw new IllegalArgumentException("--" + name + " is required");
        }
        return v;
    }

    public static void main(String[] args) throws Exception {
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", System.getProperty(
                "org.slf4j.simpleLogger.defaultLogLevel", "warn"));
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        Map<String, String> opts = parseArgs(args);
        Schema schema = new Schema.Parser().parse(new File(need(opts, "schema")));
        ParallelConsumerPeer peer = new ParallelConsumerPeer(schema);
        if (opts.containsKey("transform")) {
            peer.transformStdin();
            return;
        }
        System.exit(peer.run(opts));
    }

    void transformStdin() throws IOException {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        StringBuilder out = new StringBuilder();
        for (String line; (line = in.readLine()) != null; ) {
            GenericRecord event = decode(Base64.getDecoder().decode(line.trim()));
            if (!isPushed(event)) {
                out.append("SKIP\n");
                continue;
            }
            try {
                out.append(new String(erpBody(event), StandardCharsets.UTF_8)).append('\n');
            } catch (InvalidValue e) {
                out.append("INVALID ").append(e.code).append('\n');
            }
        }
        System.out.write(out.toString().getBytes(StandardCharsets.UTF_8));
        System.out.flush();
    }

    int run(Map<String, String> opts) throws Exception {
        long startMs = System.currentTimeMillis();
        String bootstrap = need(opts, "bootstrap");
        String topic = need(opts, "topic");
        String group = need(opts, "group");
        url = URI.create(need(opts, "url"));
        int maxConcurrency = Integer.parseInt(opts.getOrDefault("max-concurrency", "32"));
        long expect = Long.parseLong(opts.getOrDefault("expect-records", "0"));
        double idleExitS = Double.parseDouble(opts.getOrDefault("idle-exit-s", "2"));
        double startTimeoutS = Double.parseDouble(opts.getOrDefault("start-timeout-s", "120"));
        requestTimeout = Duration.ofMillis((long) (1000 * Double.parseDouble(opts.getOrDefault("timeout-s", "10"))));
        CommitMode commitMode = CommitMode.valueOf(opts.getOrDefault("commit-mode", "PERIODIC_CONSUMER_ASYNCHRONOUS"));

        // HTTP/1.1: the ERP (and the stub) speak HTTP/1.1; left at its default (HTTP/2), the client
        // would send an h2c upgrade on every new plain-text connection.
        http = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(5))
                .build();

        Properties props = new Properties();
        props.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        props.put(ConsumerConfig.GROUP_ID_CONFIG, group);
        props.put(ConsumerConfig.CLIENT_ID_CONFIG, "parallel-consumer-peer");
        props.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false"); // Parallel Consumer commits
        props.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        props.put(ConsumerConfig.INTERCEPTOR_CLASSES_CONFIG, CommitCounter.class.getName());
        KafkaConsumer<String, byte[]> consumer =
                new KafkaConsumer<>(props, new StringDeserializer(), new ByteArrayDeserializer());

        ParallelConsumerOptions<String, byte[]> options = ParallelConsumerOptions.<String, byte[]>builder()
                .ordering(ProcessingOrder.KEY)
                .maxConcurrency(maxConcurrency)
                .commitMode(commitMode)
                .consumer(consumer)
                .build();
        ParallelStreamProcessor<String, byte[]> pc = ParallelStreamProcessor.createEosStreamProcessor(options);
        pc.subscribe(List.of(topic));
        pc.poll(context -> handle(context.getSingleConsumerRecord()));

        String stopReason;
        while (true) {
            Thread.sleep(20);
            long now = System.currentTimeMillis();
            if (pc.isClosedOrFailed()) {
                stopReason = "failed";
                break;
            }
            if (expect > 0 && finished.get() >= expect) {
                stopReason = "expected records finished";
                break;
            }
            long last = lastFinishedMs.get();
            if (last > 0 && now - last > idleExitS * 1000) {
                stopReason = "idle";
                break;
            }
            if (firstRecordMs.get() == 0 && now - startMs > startTimeoutS * 1000) {
                stopReason = "no record";
                break;
            }
        }
        long stopMs = System.currentTimeMillis();
        boolean failed = pc.isClosedOrFailed() && stopReason.equals("failed");
        try {
            pc.close(); // commits the offsets of the finished records
        } catch (RuntimeException e) {
            System.err.println("peer: close failed: " + e);
            failed = true;
        }
        long closedMs = System.currentTimeMillis();
        long first = firstRecordMs.get();
        long last = lastFinishedMs.get();
        Map<String, Object> summary = new LinkedHashMap<>();
        summary.put("records", finished.get());
        summary.put("pushes", requests.get());
        summary.put("seconds", first > 0 && last >= first ? (last - first) / 1000.0 : 0.0);
        summary.put("accepted", accepted.get());
        summary.put("rejected", rejected.get());
        summary.put("retries", retries.get());
        summary.put("skipped", skipped.get());
        summary.put("invalid", invalid.get());
        summary.put("commits", CommitCounter.COMMITS.get());
        summary.put("stop", stopReason);
        summary.put("t_start", startMs / 1000.0);
        summary.put("t_first_record", first / 1000.0);
        summary.put("t_last_finished", last / 1000.0);
        summary.put("t_stop", stopMs / 1000.0);
        summary.put("t_closed", closedMs / 1000.0);
        summary.put("max_concurrency", maxConcurrency);
        summary.put("ordering", "KEY");
        summary.put("commit_mode", commitMode.name());
        summary.put("java", System.getProperty("java.version"));
        summary.put("max_heap_mb", Runtime.getRuntime().maxMemory() / (1 << 20));
        System.out.println(MAPPER.writeValueAsString(summary));
        System.out.flush();
        return failed ? 1 : 0;
    }
}

// The unmodified centrifuge-java SDK against two Meshcast gateways, for
// tests/e2e/test_sdk_java.py (the same scenario as tests/e2e/sdk/go/main.go).
//
//   java -jar sdkjava.jar <ws url of gateway A> <ws url of gateway B>
//
// centrifuge-java speaks protobuf only. The HMAC secret comes in MESHCAST_SDK_SECRET;
// every wait is scaled by MESHCAST_TEST_TIMEOUT_SCALE. Prints one JSON line per step,
// {"step": name, "ok": bool, "error": ..., <results>}, and stops at the first failed
// step (exit 1). Gateway A's restart is the test's: the program prints
// {"await": "gateway_a_down"} and reads "down" on stdin, publishes while A is away,
// then prints {"await": "gateway_a_up"} and reads "up".
package dev.meshcast.e2e;

import io.github.centrifugal.centrifuge.Client;
import io.github.centrifugal.centrifuge.ClientInfo;
import io.github.centrifugal.centrifuge.ConnectedEvent;
import io.github.centrifugal.centrifuge.ConnectingEvent;
import io.github.centrifugal.centrifuge.ConnectionTokenEvent;
import io.github.centrifugal.centrifuge.ConnectionTokenGetter;
import io.github.centrifugal.centrifuge.DisconnectedEvent;
import io.github.centrifugal.centrifuge.ErrorEvent;
import io.github.centrifugal.centrifuge.EventListener;
import io.github.centrifugal.centrifuge.HistoryOptions;
import io.github.centrifugal.centrifuge.HistoryResult;
import io.github.centrifugal.centrifuge.Options;
import io.github.centrifugal.centrifuge.PresenceResult;
import io.github.centrifugal.centrifuge.PresenceStatsResult;
import io.github.centrifugal.centrifuge.Publication;
import io.github.centrifugal.centrifuge.PublicationEvent;
import io.github.centrifugal.centrifuge.PublishResult;
import io.github.centrifugal.centrifuge.ResultCallback;
import io.github.centrifugal.centrifuge.ServerPublicationEvent;
import io.github.centrifugal.centrifuge.ServerSubscribedEvent;
import io.github.centrifugal.centrifuge.SubscribedEvent;
import io.github.centrifugal.centrifuge.Subscription;
import io.github.centrifugal.centrifuge.SubscriptionErrorEvent;
import io.github.centrifugal.centrifuge.SubscriptionEventListener;
import io.github.centrifugal.centrifuge.SubscriptionOptions;
import io.github.centrifugal.centrifuge.TokenCallback;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collections;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public final class SdkJava {
    static double scale = 1.0;
    static String secret;
    static final BlockingQueue<String> stdin = new LinkedBlockingQueue<>();
    static final String WARM_UP = "{\"warm_up\":true}";

    /** `s` seconds scaled for this machine, in milliseconds. */
    static long ms(double s) {
        return (long) (s * scale * 1000);
    }

    /** A JSON text to embed as is (the publications' data is JSON this program made). */
    record Raw(String json) {}

    static synchronized void emit(Map<String, Object> line) {
        StringBuilder out = new StringBuilder();
        write(out, line);
        System.out.println(out);
        System.out.flush();
    }

    static void write(StringBuilder out, Object value) {
        if (value == null) {
            out.append("null");
        } else if (value instanceof Raw raw) {
            out.append(raw.json());
        } else if (value instanceof Boolean || value instanceof Number) {
            out.append(value);
        } else if (value instanceof Map<?, ?> map) {
            out.append('{');
            String sep = "";
            for (Map.Entry<?, ?> e : map.entrySet()) {
                out.append(sep);
                write(out, String.valueOf(e.getKey()));
                out.append(':');
                write(out, e.getValue());
                sep = ",";
            }
            out.append('}');
        } else if (value instanceof List<?> list) {
            out.append('[');
            String sep = "";
            for (Object item : list) {
                out.append(sep);
                write(out, item);
                sep = ",";
            }
            out.append(']');
        } else {
            out.append('"');
            for (char c : value.toString().toCharArray()) {
                if (c == '"' || c == '\\') {
                    out.append('\\').append(c);
                } else if (c < 0x20) {
                    out.append(String.format("\\u%04x", (int) c));
                } else {
                    out.append(c);
                }
            }
            out.append('"');
        }
    }

    static String json(Object value) {
        StringBuilder out = new StringBuilder();
        write(out, value);
        return out.toString();
    }

    /** An HS256 connection JWT for `user`, living `ttlSeconds`, with `extra` claims. */
    static String token(String user, long ttlSeconds, Map<String, Object> extra) {
        Map<String, Object> claims = new LinkedHashMap<>();
        claims.put("sub", user);
        claims.put("exp", System.currentTimeMillis() / 1000 + ttlSeconds);
        claims.putAll(extra);
        Base64.Encoder enc = Base64.getUrlEncoder().withoutPadding();
        String signing = enc.encodeToString("{\"alg\":\"HS256\",\"typ\":\"JWT\"}".getBytes(StandardCharsets.UTF_8))
                + "." + enc.encodeToString(json(claims).getBytes(StandardCharsets.UTF_8));
        try {
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(secret.getBytes(StandardCharsets.UTF_8), "HmacSHA256"));
            return signing + "." + enc.encodeToString(mac.doFinal(signing.getBytes(StandardCharsets.UTF_8)));
        } catch (Exception e) {
            throw new IllegalStateException(e);
        }
    }

    static final class StepError extends Exception {
        StepError(String message) {
            super(message);
        }
    }

    /** One value of `queue`, at most `millis`. */
    static <T> T receive(BlockingQueue<T> queue, long millis, String what) throws Exception {
        T value = queue.poll(millis, TimeUnit.MILLISECONDS);
        if (value == null) {
            throw new StepError("timed out after " + millis + " ms waiting for " + what);
        }
        return value;
    }

    /** The result of one SDK call, at most 5 s (scaled). */
    static <T> T call(java.util.function.Consumer<ResultCallback<T>> op, String what) throws Exception {
        CompletableFuture<T> done = new CompletableFuture<>();
        op.accept((err, result) -> {
            if (err != null) {
                done.completeExceptionally(err);
            } else {
                done.complete(result);
            }
        });
        try {
            return done.get(ms(5), TimeUnit.MILLISECONDS);
        } catch (java.util.concurrent.TimeoutException e) {
            throw new StepError("timed out waiting for " + what);
        } catch (java.util.concurrent.ExecutionException e) {
            throw new StepError(what + ": " + e.getCause());
        }
    }

    static boolean isWarmUp(byte[] data) {
        return WARM_UP.equals(new String(data, StandardCharsets.UTF_8));
    }

    static Raw data(byte[] data) {
        return new Raw(new String(data, StandardCharsets.UTF_8));
    }

    static String value(int n, String from) {
        return "{\"n\":" + n + ",\"from\":\"" + from + "\"}";
    }

    /** One client and what its connection saw. */
    static final class Peer extends EventListener {
        final String name;
        final Client client;
        final BlockingQueue<ConnectedEvent> connected = new LinkedBlockingQueue<>();
        final BlockingQueue<ServerSubscribedEvent> serverSubs = new LinkedBlockingQueue<>();
        final BlockingQueue<ServerPublicationEvent> serverPubs = new LinkedBlockingQueue<>();
        final BlockingQueue<Boolean> warmedUp = new LinkedBlockingQueue<>();
        final List<Integer> codes = Collections.synchronizedList(new ArrayList<>());
        final List<String> errors = Collections.synchronizedList(new ArrayList<>());

        Peer(String name, String url, Options opts) {
            this.name = name;
            opts.setMaxReconnectDelay((int) ms(1));
            this.client = new Client(url, opts, this);
        }

        @Override
        public void onConnected(Client client, ConnectedEvent event) {
            connected.add(event);
        }

        @Override
        public void onConnecting(Client client, ConnectingEvent event) {
            codes.add(event.getCode());
        }

        @Override
        public void onDisconnected(Client client, DisconnectedEvent event) {
            codes.add(event.getCode());
        }

        @Override
        public void onError(Client client, ErrorEvent event) {
            errors.add(String.valueOf(event.getError()));
        }

        @Override
        public void onSubscribed(Client client, ServerSubscribedEvent event) {
            serverSubs.add(event);
        }

        @Override
        public void onPublication(Client client, ServerPublicationEvent event) {
            if (isWarmUp(event.getData())) {
                warmedUp.offer(true);
            } else {
                serverPubs.add(event);
            }
        }

        ConnectedEvent connect() throws Exception {
            client.connect();
            return receive(connected, ms(5), name + " connected");
        }

        void publish(String channel, String data) throws Exception {
            SdkJava.<PublishResult>call(
                    cb -> client.publish(channel, data.getBytes(StandardCharsets.UTF_8), cb), name + " publish");
        }

        Tracked subscribe(String channel, SubscriptionOptions opts) throws Exception {
            Tracked t = new Tracked();
            t.sub = client.newSubscription(channel, opts, t);
            t.sub.subscribe();
            try {
                t.first = receive(t.subscribed, ms(5), name + " subscribed to " + channel);
            } catch (StepError e) {
                throw new StepError(e.getMessage() + " (subscription errors: " + t.errors + ")");
            }
            return t;
        }
    }

    /** One subscription and what it received (warm-up probes apart). */
    static final class Tracked extends SubscriptionEventListener {
        Subscription sub;
        SubscribedEvent first;
        final BlockingQueue<SubscribedEvent> subscribed = new LinkedBlockingQueue<>();
        final BlockingQueue<PublicationEvent> pubs = new LinkedBlockingQueue<>();
        final BlockingQueue<Boolean> warmedUp = new LinkedBlockingQueue<>();
        final List<String> errors = Collections.synchronizedList(new ArrayList<>());

        @Override
        public void onError(Subscription sub, SubscriptionErrorEvent event) {
            errors.add(String.valueOf(event.getError()));
        }

        @Override
        public void onSubscribed(Subscription sub, SubscribedEvent event) {
            subscribed.add(event);
        }

        @Override
        public void onPublication(Subscription sub, PublicationEvent event) {
            if (isWarmUp(event.getData())) {
                warmedUp.offer(true);
            } else {
                pubs.add(event);
            }
        }

        /** The next `n` publications' data, into `result` with their publishers. */
        void next(int n, long millis, Map<String, Object> result, String prefix) throws Exception {
            List<Object> data = new ArrayList<>();
            List<Object> users = new ArrayList<>();
            result.put(prefix + "received", data);
            result.put(prefix + "publishers", users);
            long deadline = System.currentTimeMillis() + millis;
            while (data.size() < n) {
                PublicationEvent e = pubs.poll(Math.max(0, deadline - System.currentTimeMillis()), TimeUnit.MILLISECONDS);
                if (e == null) {
                    throw new StepError("got " + data.size() + " of " + n + " publications within " + millis + " ms");
                }
                data.add(data(e.getData()));
                users.add(e.getInfo() == null ? "" : e.getInfo().getUser());
            }
        }
    }

    /** Publish probes until `seen` has one: a new subscription's interest reaches the
     * other NATS nodes a moment after its subscribe reply. */
    static void warm(Peer publisher, String channel, BlockingQueue<Boolean> seen) throws Exception {
        long deadline = System.currentTimeMillis() + ms(10);
        while (System.currentTimeMillis() < deadline) {
            publisher.publish(channel, WARM_UP);
            if (seen.poll(ms(0.2), TimeUnit.MILLISECONDS) != null) {
                return;
            }
        }
        throw new StepError("no warm-up probe arrived within 10 s");
    }

    static void awaitTest(String what, String answer) throws Exception {
        Map<String, Object> line = new LinkedHashMap<>();
        line.put("await", what);
        emit(line);
        String got = receive(stdin, ms(30), "the test's \"" + answer + "\"");
        if (!got.equals(answer)) {
            throw new StepError("the test said " + got + ", not " + answer);
        }
    }

    interface Step {
        void run(Map<String, Object> result) throws Exception;
    }

    final String urlA;
    final String urlB;
    final String channel = "chat:java";
    final String serverChannel = "chat:java-server";
    final AtomicInteger refreshes = new AtomicInteger();
    final long refreshTtl = (long) Math.ceil(2 * scale) + 1; // as meshcast.testing.token_ttl(2)
    Peer a;
    Peer b;
    Peer c;
    Peer r;
    Tracked subA;
    Tracked subB;

    SdkJava(String urlA, String urlB) {
        this.urlA = urlA;
        this.urlB = urlB;
    }

    static Options withToken(String token) {
        Options opts = new Options();
        opts.setToken(token);
        return opts;
    }

    void connect(Map<String, Object> result) throws Exception {
        a = new Peer("a", urlA, withToken(token("java-a", 3600, Map.of())));
        b = new Peer("b", urlB, withToken(token("java-b", 3600, Map.of())));
        // The refreshing client starts now and is checked last: its refreshes run beside the other steps.
        Options opts = new Options();
        opts.setTokenGetter(new ConnectionTokenGetter() {
            @Override
            public void getConnectionToken(ConnectionTokenEvent event, TokenCallback cb) {
                refreshes.incrementAndGet();
                cb.Done(null, token("java-r", refreshTtl, Map.of()));
            }
        });
        r = new Peer("r", urlB, opts);
        for (Peer p : List.of(a, b, r)) {
            result.put(p.name + "_client", p.connect().getClient());
        }
    }

    void subscribe(Map<String, Object> result) throws Exception {
        SubscriptionOptions opts = new SubscriptionOptions();
        opts.setRecoverable(true);
        opts.setPositioned(true);
        subA = a.subscribe(channel, opts);
        result.put("recoverable", subA.first.getRecoverable());
        result.put("positioned", subA.first.getPositioned());
        result.put("has_stream_position", subA.first.getStreamPosition() != null);
        subB = b.subscribe(channel, new SubscriptionOptions());
    }

    void publishAcross(Map<String, Object> result) throws Exception {
        warm(b, channel, subA.warmedUp);
        warm(a, channel, subB.warmedUp);
        b.publish(channel, value(1, "b"));
        a.publish(channel, value(2, "a"));
        subA.next(2, ms(5), result, "a_");
        subB.next(2, ms(5), result, "b_");
    }

    void history(Map<String, Object> result) throws Exception {
        HistoryOptions opts = new HistoryOptions.Builder().withLimit(100).build();
        HistoryResult res = call(cb -> subA.sub.history(opts, cb), "history");
        List<Object> data = new ArrayList<>();
        List<Object> offsets = new ArrayList<>();
        for (Publication pub : res.getPublications()) {
            if (!isWarmUp(pub.getData())) {
                data.add(data(pub.getData()));
                offsets.add(pub.getOffset());
            }
        }
        result.put("publications", data);
        result.put("offsets", offsets);
        result.put("epoch", res.getEpoch());
        result.put("offset", res.getOffset());
    }

    /** Calls `attempt` until it returns true, at most `millis`; the last result stands. */
    static void poll(long millis, java.util.concurrent.Callable<Boolean> attempt) throws Exception {
        long deadline = System.currentTimeMillis() + millis;
        while (!attempt.call()) {
            if (System.currentTimeMillis() > deadline) {
                throw new StepError("not as expected within " + millis + " ms");
            }
            Thread.sleep(ms(0.1));
        }
    }

    void presence(Map<String, Object> result) throws Exception {
        poll(ms(5), () -> {
            PresenceResult res = call(cb -> subA.sub.presence(cb), "presence");
            List<String> users = new ArrayList<>();
            for (ClientInfo info : res.getClients().values()) {
                users.add(info.getUser());
            }
            Collections.sort(users);
            result.put("users", users);
            return users.equals(List.of("java-a", "java-b"));
        });
    }

    void presenceStats(Map<String, Object> result) throws Exception {
        poll(ms(5), () -> {
            PresenceStatsResult res = call(cb -> subA.sub.presenceStats(cb), "presence stats");
            result.put("num_clients", res.getNumClients());
            result.put("num_users", res.getNumUsers());
            return res.getNumClients() == 2 && res.getNumUsers() == 2;
        });
    }

    void serverSide(Map<String, Object> result) throws Exception {
        Map<String, Object> subs = Map.of("subs", Map.of(serverChannel, Map.of()));
        c = new Peer("c", urlA, withToken(token("java-c", 3600, subs)));
        c.connect();
        ServerSubscribedEvent event = receive(c.serverSubs, ms(5), "the server-side subscription");
        result.put("channel", event.getChannel());
        warm(b, serverChannel, c.warmedUp);
        b.publish(serverChannel, value(3, "b"));
        ServerPublicationEvent pub = receive(c.serverPubs, ms(5), "a publication on the server-side subscription");
        result.put("received_channel", pub.getChannel());
        result.put("received", data(pub.getData()));
    }

    void recovery(Map<String, Object> result) throws Exception {
        awaitTest("gateway_a_down", "down");
        List<Object> expected = new ArrayList<>();
        result.put("expected", expected);
        for (int n = 10; n < 15; n++) {
            b.publish(channel, value(n, "b"));
            expected.add(new Raw(value(n, "b")));
        }
        awaitTest("gateway_a_up", "up");
        SubscribedEvent event = subA.subscribed.poll(ms(15), TimeUnit.MILLISECONDS);
        if (event == null) {
            throw new StepError("a's subscription did not come back within 15 s after the restart"
                    + " (subscription errors: " + subA.errors + ")");
        }
        result.put("was_recovering", event.wasRecovering());
        result.put("recovered", event.getRecovered());
        result.put("a_connection_codes", new ArrayList<>(a.codes));
        subA.next(expected.size(), ms(5), result, "");
    }

    void refresh(Map<String, Object> result) throws Exception {
        // Calls: the first connect, then one per refresh the SDK schedules from the ttl of
        // the previous reply. A refused refresh is retried only after 10 s or more, so a
        // third call this soon means the gateway accepted the second token.
        result.put("token_ttl_seconds", refreshTtl);
        try {
            poll(ms(refreshTtl * 3 + 5), () -> {
                result.put("get_token_calls", refreshes.get());
                return refreshes.get() >= 3;
            });
        } finally {
            List<Integer> codes = new ArrayList<>(r.codes);
            if (!codes.isEmpty() && codes.get(0) == 0) {
                codes.remove(0); // connect() itself reports connecting, code 0
            }
            result.put("codes", codes);
            result.put("errors", new ArrayList<>(r.errors));
            result.put("state", r.client.getState().toString().toLowerCase());
        }
        r.publish(channel, value(4, "r"));
    }

    void close() {
        for (Peer p : new Peer[] {a, b, c, r}) {
            if (p != null) {
                p.client.disconnect();
            }
        }
    }

    public static void main(String[] args) throws Exception {
        secret = System.getenv("MESHCAST_SDK_SECRET");
        String scaleEnv = System.getenv("MESHCAST_TEST_TIMEOUT_SCALE");
        if (scaleEnv != null && !scaleEnv.isBlank()) {
            scale = Double.parseDouble(scaleEnv);
        }
        if (secret == null || secret.isEmpty() || args.length != 2) {
            System.err.println("usage: MESHCAST_SDK_SECRET=... java -jar sdkjava.jar <url A> <url B>");
            System.exit(2);
        }
        Thread reader = new Thread(() -> {
            try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8))) {
                String line;
                while ((line = in.readLine()) != null) {
                    stdin.add(line);
                }
            } catch (java.io.IOException e) {
                // stdin closed: the test is gone, and so is every answer.
            }
        });
        reader.setDaemon(true);
        reader.start();
        SdkJava s = new SdkJava(args[0], args[1]);
        Map<String, Step> steps = new LinkedHashMap<>();
        steps.put("connect", s::connect);
        steps.put("subscribe", s::subscribe);
        steps.put("publish_across_gateways", s::publishAcross);
        steps.put("history", s::history);
        steps.put("presence", s::presence);
        steps.put("presence_stats", s::presenceStats);
        steps.put("server_side_subscription", s::serverSide);
        steps.put("recovery_after_gateway_restart", s::recovery);
        steps.put("token_refresh", s::refresh);
        int status = 0;
        for (Map.Entry<String, Step> step : steps.entrySet()) {
            Map<String, Object> result = new LinkedHashMap<>();
            result.put("step", step.getKey());
            try {
                step.getValue().run(result);
                result.put("ok", true);
                emit(result);
            } catch (Exception e) {
                result.put("ok", false);
                result.put("error", e instanceof StepError ? e.getMessage() : e.toString());
                emit(result);
                status = 1;
                break;
            }
        }
        if (status == 0) {
            Map<String, Object> done = new LinkedHashMap<>();
            done.put("step", "done");
            done.put("ok", true);
            emit(done);
        }
        s.close();
        // The SDK's executors are not daemons: end the JVM here, not when they idle out.
        System.exit(status);
    }
}

// Drives the unmodified centrifuge-js SDK for tests/e2e/test_centrifuge_js.py.
//
// node client.js <protobuf|json> <subscriber url> <publisher url> <sub token> <pub token> <channel> <count>
// The subscriber subscribes, the publisher publishes <count> payloads {"n": i};
// every publication the subscriber receives is printed as one JSON line, then "done".
const WebSocket = require("ws");

const [format, subUrl, pubUrl, subToken, pubToken, channel, countArg] = process.argv.slice(2);
const protobuf = format === "protobuf";
const { Centrifuge } = protobuf ? require("centrifuge/build/protobuf") : require("centrifuge");
const count = Number(countArg);

const encode = (value) => (protobuf ? new TextEncoder().encode(JSON.stringify(value)) : value);
const decode = (data) => (protobuf ? JSON.parse(new TextDecoder().decode(data)) : data);

const subscriber = new Centrifuge(subUrl, { token: subToken, websocket: WebSocket });
const publisher = new Centrifuge(pubUrl, { token: pubToken, websocket: WebSocket });
const fail = (why) => {
  console.log(JSON.stringify({ error: why }));
  process.exit(1);
};
setTimeout(() => fail("timeout"), 20000);

let seen = 0;
const sub = subscriber.newSubscription(channel);
sub.on("publication", (ctx) => {
  console.log(JSON.stringify({ data: decode(ctx.data), user: ctx.info ? ctx.info.user : null }));
  seen += 1;
  if (seen === count) {
    console.log("done");
    subscriber.disconnect();
    publisher.disconnect();
    process.exit(0);
  }
});
sub.on("error", (ctx) => fail(`subscription error ${JSON.stringify(ctx.error)}`));
sub.on("subscribed", async () => {
  await publisher.ready(5000);
  for (let i = 0; i < count; i += 1) {
    await publisher.publish(channel, encode({ n: i }));
  }
});
sub.subscribe();
subscriber.connect();
publisher.connect();

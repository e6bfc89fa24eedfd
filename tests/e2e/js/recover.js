// centrifuge-js recovering from a saved stream position (the `since` option), for
// tests/e2e/test_centrifuge_js.py.
//
// node recover.js <url> <token> <channel> <missed>
// Prints one JSON line per event: {"subscribed": {...}} and {"pub": ...}, then "done".
const WebSocket = require("ws");
const { Centrifuge } = require("centrifuge");

const [url, token, channel, missedArg] = process.argv.slice(2);
const missed = Number(missedArg);
const out = (value) => console.log(JSON.stringify(value));
setTimeout(() => {
  out({ error: "timeout" });
  process.exit(1);
}, 20000);

const open = () => {
  const client = new Centrifuge(url, { token, websocket: WebSocket });
  client.connect();
  return client;
};

(async () => {
  const publisher = open();
  await publisher.ready(5000);
  const first = open();
  const sub = first.newSubscription(channel);
  let position = null;
  sub.on("publication", (ctx) => {
    position = { offset: ctx.offset, epoch: sub._epoch };
  });
  sub.subscribe();
  await sub.ready(5000);
  await publisher.publish(channel, { n: 0 });
  while (position === null) await new Promise((r) => setTimeout(r, 20));
  first.disconnect();

  for (let i = 1; i <= missed; i += 1) await publisher.publish(channel, { n: i });

  const second = open();
  const resumed = second.newSubscription(channel, { since: position });
  let seen = 0;
  resumed.on("subscribed", (ctx) => out({ subscribed: { wasRecovering: ctx.wasRecovering, recovered: ctx.recovered } }));
  resumed.on("publication", (ctx) => {
    out({ pub: ctx.data, offset: ctx.offset });
    seen += 1;
    if (seen === missed) {
      console.log("done");
      process.exit(0);
    }
  });
  resumed.subscribe();
})();

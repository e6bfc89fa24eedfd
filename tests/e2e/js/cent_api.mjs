// Drives the unmodified cent.js server-API client for tests/e2e/test_server_api_js.py.
//
// node cent_api.mjs <api url> <api key> <cent.js method> [<argument as JSON>]
// One call, e.g. `publish '{"channel":"news","data":{}}'`, `getInfo`, or `pipeline '[...]'`,
// on a fresh CentClient. Prints one JSON line and exits 0 either way:
//   {"resolved": <what the promise resolved to>}
//   {"rejected": {"class", "name", "message", "centException", "own"}}
// where "own" holds the error's own enumerable properties (a code, a status: whatever
// the client attached). The test judges; this script only reports what the client did.
import { CentClient, CentException } from "cent.js";

const [url, apiKey, method, argument] = process.argv.slice(2);
const client = new CentClient({ url, apiKey });
if (typeof client[method] !== "function") {
  console.error(`cent.js has no method ${method}`);
  process.exit(2);
}

const described = (err) => ({
  class: err?.constructor?.name ?? typeof err,
  name: err?.name ?? null,
  message: err instanceof Error ? err.message : String(err),
  centException: err instanceof CentException,
  own: err !== null && typeof err === "object" ? { ...err } : {},
});

try {
  const value = await (argument === undefined ? client[method]() : client[method](JSON.parse(argument)));
  console.log(JSON.stringify({ resolved: value ?? null }));
} catch (err) {
  console.log(JSON.stringify({ rejected: described(err) }));
}

// The official Durable Task JavaScript SDK (@microsoft/durabletask-js, pinned in package.json)
// against `duratask serve`. Run by tests/compat/test_js_sdk.py: `node scenarios.js HOST:PORT`.
// Prints one JSON line per scenario ({"scenario", "ok", ...}) and exits non-zero if one failed.
"use strict";

const {
  TaskHubGrpcClient,
  TaskHubGrpcWorker,
  OrchestrationStatus,
  NoOpLogger,
  whenAll,
} = require("@microsoft/durabletask-js");

const address = process.argv[2];
const TIMEOUT_S = 30;

const sayHello = async (_ctx, city) => `Hello ${city}!`;
const square = async (_ctx, n) => n * n;

const helloCities = async function* (ctx) {
  const out = [];
  for (const city of ["Tokyo", "Seattle", "London"]) {
    out.push(yield ctx.callActivity(sayHello, city));
  }
  return out;
};

const fanOut = async function* (ctx, n) {
  const results = yield whenAll([...Array(n).keys()].map((i) => ctx.callActivity(square, i)));
  return results.reduce((a, b) => a + b, 0);
};

const approval = async function* (ctx) {
  const decision = yield ctx.waitForExternalEvent("approval");
  return { approved: decision };
};

const sleeper = async function* (ctx, seconds) {
  const before = ctx.currentUtcDateTime.getTime();
  yield ctx.createTimer(seconds);
  return (ctx.currentUtcDateTime.getTime() - before) / 1000;
};

const echo = async function* (_ctx, value) {
  return value;
};

function assert(condition, message) {
  if (!condition) throw new Error(message);
}

async function completed(client, id) {
  const state = await client.waitForOrchestrationCompletion(id, true, TIMEOUT_S);
  assert(state, `instance ${id} not found`);
  assert(
    state.runtimeStatus === OrchestrationStatus.COMPLETED,
    `instance ${id} ended ${state.runtimeStatus}: ${JSON.stringify(state.failureDetails)}`,
  );
  return state;
}

const scenarios = {
  async chain(client) {
    const id = await client.scheduleNewOrchestration(helloCities);
    const state = await completed(client, id);
    const output = JSON.parse(state.serializedOutput);
    assert(
      JSON.stringify(output) === JSON.stringify(["Hello Tokyo!", "Hello Seattle!", "Hello London!"]),
      `unexpected output ${state.serializedOutput}`,
    );
    return { output };
  },

  async fanOut(client) {
    const id = await client.scheduleNewOrchestration(fanOut, 20);
    const state = await completed(client, id);
    const output = JSON.parse(state.serializedOutput);
    assert(output === 2470, `unexpected sum ${output}`);
    return { output };
  },

  async event(client) {
    const id = await client.scheduleNewOrchestration(approval);
    await client.waitForOrchestrationStart(id, false, TIMEOUT_S);
    await client.raiseOrchestrationEvent(id, "approval", true);
    const state = await completed(client, id);
    assert(JSON.parse(state.serializedOutput).approved === true, `unexpected ${state.serializedOutput}`);
    return { output: JSON.parse(state.serializedOutput) };
  },

  async timer(client) {
    const started = Date.now();
    const id = await client.scheduleNewOrchestration(sleeper, 1);
    const state = await completed(client, id);
    const waited = (Date.now() - started) / 1000;
    assert(waited >= 1, `the timer fired after ${waited}s`);
    return { output: JSON.parse(state.serializedOutput), waited };
  },

  async query(client) {
    const prefix = `js-query-${Date.now()}-`;
    const ids = [];
    for (let i = 0; i < 5; i++) {
      ids.push(await client.scheduleNewOrchestration(echo, i, `${prefix}${i}`));
    }
    for (const id of ids) await completed(client, id);
    const seen = [];
    let pages = 0;
    for await (const page of client.getAllInstances({ instanceIdPrefix: prefix, pageSize: 2 }).asPages()) {
      pages += 1;
      for (const state of page.values) seen.push(state.instanceId);
    }
    assert(JSON.stringify(seen.sort()) === JSON.stringify(ids.sort()), `query found ${seen}`);
    assert(pages >= 3, `expected at least 3 pages of 2, got ${pages}`);
    const running = [];
    for await (const state of client.getAllInstances({
      instanceIdPrefix: prefix,
      statuses: [OrchestrationStatus.RUNNING],
    })) {
      running.push(state.instanceId);
    }
    assert(running.length === 0, `unexpected running instances ${running}`);
    const one = await client.getOrchestrationState(ids[0], true);
    assert(one && one.serializedOutput === "0", `unexpected state ${JSON.stringify(one)}`);
    const missing = await client.getOrchestrationState(`${prefix}missing`);
    assert(missing === undefined, "a missing instance must read as undefined");
    return { found: seen.length, pages };
  },
};

async function main() {
  const logger = new NoOpLogger();
  const worker = new TaskHubGrpcWorker({ hostAddress: address, logger });
  for (const fn of [helloCities, fanOut, approval, sleeper, echo]) worker.addOrchestrator(fn);
  for (const fn of [sayHello, square]) worker.addActivity(fn);
  const client = new TaskHubGrpcClient({ hostAddress: address, logger });
  await worker.start();
  let failed = 0;
  const only = process.argv.slice(3);
  for (const [name, run] of Object.entries(scenarios)) {
    if (only.length && !only.includes(name)) continue;
    const started = Date.now();
    try {
      const details = await run(client);
      console.log(JSON.stringify({ scenario: name, ok: true, ms: Date.now() - started, ...details }));
    } catch (err) {
      failed += 1;
      console.log(JSON.stringify({ scenario: name, ok: false, error: String(err && err.stack ? err.stack : err) }));
    }
  }
  await client.stop();
  await worker.stop();
  process.exit(failed ? 1 : 0);
}

main().catch((err) => {
  console.log(JSON.stringify({ scenario: "setup", ok: false, error: String(err && err.stack ? err.stack : err) }));
  process.exit(2);
});

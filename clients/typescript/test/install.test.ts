/**
 * The install story as a user lives it: the packed tarball installed into a new
 * project, then another `npm install` (the one that used to turn a directory
 * install into a symlink without dependencies), then the examples compiled
 * against the installed package and the quickstart run against a real broker,
 * without the optional OpenTelemetry API; then, the API and the SDK added to
 * the project, a publish and its handler traced as one trace.
 * Needs the npm registry or npm's cache for the dependencies.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFileSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { promisify } from "node:util";

import { type Broker, startBroker } from "./broker";

const run = promisify(execFile);
/** The package's directory (this file runs as build/test/install.test.js). */
const PACKAGE_DIR = path.resolve(__dirname, "../..");
const INSTALL_TIMEOUT_MS = 240_000;

/** The version the package's own lock pins, so the second install comes from npm's cache. */
function lockedVersion(name: string): string {
  const manifest = JSON.parse(readFileSync(path.join(PACKAGE_DIR, "node_modules", name, "package.json"), "utf8"));
  return String(manifest.version);
}

/** npm as a user runs it: without the npm_* settings of the `npm test` that runs this file. */
function npmEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([key]) => !key.toLowerCase().startsWith("npm_")));
}

async function npm(args: string[], cwd: string): Promise<string> {
  const { stdout } = await run("npm", [...args, "--no-audit", "--no-fund"], {
    cwd,
    env: npmEnv(),
    timeout: INSTALL_TIMEOUT_MS,
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

let broker: Broker;
let workdir: string;

before(async () => {
  broker = await startBroker();
  workdir = mkdtempSync(path.join(tmpdir(), "eventbroker-install-"));
});

after(async () => {
  await broker?.stop();
  if (workdir) rmSync(workdir, { recursive: true, force: true });
});

test("the packed tarball survives a later npm install, the examples compile and run, and tracing turns on with the API", { timeout: 2 * INSTALL_TIMEOUT_MS }, async () => {
  const packed = (await npm(["pack", "--pack-destination", workdir], PACKAGE_DIR)).trim().split("\n").pop() ?? "";
  assert.match(packed, /^eventbroker-\d+\.\d+\.\d+\.tgz$/);
  const project = path.join(workdir, "project");
  mkdirSync(project);
  writeFileSync(path.join(project, "package.json"), JSON.stringify({ name: "install-check", version: "1.0.0", private: true }));

  await npm(["install", path.join(workdir, packed)], project);
  await npm(["install", "-D", `typescript@${lockedVersion("typescript")}`, `@types/node@${lockedVersion("@types/node")}`], project);

  const installed = path.join(project, "node_modules", "eventbroker");
  assert.equal(lstatSync(installed).isSymbolicLink(), false, "still a copy, not a link");
  assert.ok(lstatSync(path.join(project, "node_modules", "@grpc", "grpc-js", "package.json")).isFile());
  // The OpenTelemetry API is an optional peer: not installed, so the quickstart below runs without it.
  assert.equal(existsSync(path.join(project, "node_modules", "@opentelemetry", "api")), false);
  const manifest = JSON.parse(readFileSync(path.join(project, "package.json"), "utf8"));
  assert.match(String(manifest.dependencies.eventbroker), /^file:.*\.tgz$/);

  for (const example of readdirSync(path.join(PACKAGE_DIR, "examples"))) {
    copyFileSync(path.join(PACKAGE_DIR, "examples", example), path.join(project, example));
  }
  writeFileSync(
    path.join(project, "tsconfig.json"),
    JSON.stringify({
      compilerOptions: { strict: true, target: "ES2022", module: "node16", moduleResolution: "node16", types: ["node"], outDir: "out" },
      include: ["*.ts"],
    }),
  );
  await run(path.join(project, "node_modules", ".bin", "tsc"), ["-p", project], { cwd: project, timeout: INSTALL_TIMEOUT_MS });

  const { stdout } = await run(process.execPath, [path.join(project, "out", "quickstart.js")], {
    cwd: project,
    env: { ...npmEnv(), EVENTBROKER_TARGET: broker.target },
    timeout: 60_000,
  });
  assert.match(stdout, /^attached as \S+#\d+$/m);
  const received = /^received user\.joined (.*) attempt 1$/m.exec(stdout);
  assert.deepEqual(JSON.parse(received?.[1] ?? "null"), { plan: "pro", seats: [1, 2] }, stdout);
  assert.match(stdout, /^published \S+ CREATED to 1 subscriptions; then DUPLICATE$/m);
  assert.match(stdout, /^refused: INVALID_ARGUMENT .*event\.data\.order\.total/m);

  // Then the application adds OpenTelemetry: the installed client finds the project's API.
  await npm(
    ["install", `@opentelemetry/api@${lockedVersion("@opentelemetry/api")}`, `@opentelemetry/sdk-trace-base@${lockedVersion("@opentelemetry/sdk-trace-base")}`],
    project,
  );
  writeFileSync(path.join(project, "traced.js"), TRACED_SCRIPT);
  const traced = await run(process.execPath, [path.join(project, "traced.js")], {
    cwd: project,
    env: { ...npmEnv(), EVENTBROKER_TARGET: broker.target },
    timeout: 60_000,
  });
  const { publish, process: processed, traceparent } = JSON.parse(traced.stdout);
  assert.equal(traceparent, `00-${publish.traceId}-${publish.spanId}-01`, traced.stdout);
  assert.equal(processed.traceId, publish.traceId, "publish and handler are one trace");
  assert.equal(processed.parentSpanId, publish.spanId);
});

/** Publish and handle one event with the SDK's in-memory exporter; print the two spans and the header. */
const TRACED_SCRIPT = `
const { trace } = require("@opentelemetry/api");
const { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } = require("@opentelemetry/sdk-trace-base");
const { Client } = require("eventbroker");

async function main() {
  const exporter = new InMemorySpanExporter();
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }));
  const client = new Client();
  await client.createSubscription("install-traced", "install.traced", { existOk: true });
  let handled;
  const received = new Promise((resolve) => (handled = resolve));
  const consumer = client.subscribe("install-traced", (message) => handled(message.headers.traceparent));
  await consumer.ready;
  await client.publish("install.traced", { n: 1 });
  const traceparent = await received;
  await consumer.close();
  client.close();
  const span = (name) => {
    const found = exporter.getFinishedSpans().find((s) => s.name === name);
    return { traceId: found.spanContext().traceId, spanId: found.spanContext().spanId, parentSpanId: found.parentSpanContext?.spanId };
  };
  console.log(JSON.stringify({ publish: span("publish install.traced"), process: span("process install-traced"), traceparent }));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
`;

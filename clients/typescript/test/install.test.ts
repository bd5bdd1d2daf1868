/**
 * The install story as a user lives it: the packed tarball installed into a new
 * project, then another `npm install` (the one that used to turn a directory
 * install into a symlink without dependencies), then the examples compiled
 * against the installed package and the quickstart run against a real broker.
 * Needs the npm registry or npm's cache for the dependencies.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { copyFileSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
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

test("the packed tarball survives a later npm install, and the examples compile and run", { timeout: 2 * INSTALL_TIMEOUT_MS }, async () => {
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
});

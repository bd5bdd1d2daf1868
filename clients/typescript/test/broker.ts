/**
 * A real `broker serve` for the tests: a child process on a random loopback
 * port with a fresh SQLite file, stopped with SIGTERM (its own PID only).
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

/** The broker command: BROKER_BIN, else the repository's .venv (made by `make install`). */
const BROKER_BIN = process.env.BROKER_BIN ?? path.resolve(__dirname, "../../../../.venv/bin/broker");
const START_TIMEOUT_MS = 30_000;
const PORT_RE = /\(port (\d+)\)/;

export interface Broker {
  /** HOST:PORT to dial. */
  target: string;
  /** SIGTERM, wait for the exit, remove the database directory. */
  stop(): Promise<void>;
}

/** Start a broker and resolve once its log names the port it listens on. */
export async function startBroker(): Promise<Broker> {
  const dir = mkdtempSync(path.join(tmpdir(), "eventbroker-ts-"));
  const child: ChildProcess = spawn(
    BROKER_BIN,
    [
      "serve",
      "--listen", "127.0.0.1:0",
      "--http-listen", "",
      "--database-url", `sqlite:///${path.join(dir, "broker.db")}`,
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let log = "";
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`broker did not start:\n${log}`)), START_TIMEOUT_MS);
    const read = (chunk: Buffer): void => {
      log += chunk.toString();
      const match = PORT_RE.exec(log);
      if (match) {
        clearTimeout(timer);
        resolve(Number(match[1]));
      }
    };
    child.stdout?.on("data", read);
    child.stderr?.on("data", read);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(new Error(`cannot run ${BROKER_BIN} (run \`make install\`, or set BROKER_BIN): ${error.message}`));
    });
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`broker exited (${code}) before listening:\n${log}`));
    });
  });
  return {
    target: `127.0.0.1:${port}`,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      await exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

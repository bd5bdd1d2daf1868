/**
 * A real `broker serve` for the tests: a child process on a loopback port with
 * a SQLite file, stopped with SIGTERM or killed with SIGKILL (its own PID
 * only), and started again on the same port and database.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";

/** The broker command: BROKER_BIN, else the repository's .venv (made by `make install`). */
export const BROKER_BIN = process.env.BROKER_BIN ?? path.resolve(__dirname, "../../../../.venv/bin/broker");
const START_TIMEOUT_MS = 30_000;
const PORT_RE = /\(port (\d+)\)/;

export interface Broker {
  /** HOST:PORT to dial. */
  readonly target: string;
  /** The broker's log so far. */
  readonly log: () => string;
  /** SIGKILL, and wait for the exit: what it had not flushed is lost, its leases stay held. */
  kill(): Promise<void>;
  /** Start it again on the same port and database (after `kill` or `stop`). */
  restart(): Promise<void>;
  /** SIGTERM, wait for the exit, remove the database directory. */
  stop(): Promise<void>;
}

interface Running {
  child: ChildProcess;
  exited: Promise<void>;
  port: number;
}

/** Start a broker and resolve once its log names the port it listens on. */
export async function startBroker(): Promise<Broker> {
  const dir = mkdtempSync(path.join(tmpdir(), "eventbroker-ts-"));
  let log = "";
  let running = await launch(dir, "127.0.0.1:0", (chunk) => (log += chunk));
  const port = running.port;
  return {
    target: `127.0.0.1:${port}`,
    log: () => log,
    async kill() {
      if (running.child.exitCode === null && running.child.signalCode === null) running.child.kill("SIGKILL");
      await running.exited;
    },
    async restart() {
      running = await launch(dir, `127.0.0.1:${port}`, (chunk) => (log += chunk));
    },
    async stop() {
      if (running.child.exitCode === null && running.child.signalCode === null) running.child.kill("SIGTERM");
      await running.exited;
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function launch(dir: string, listen: string, onLog: (chunk: string) => void): Promise<Running> {
  const child: ChildProcess = spawn(
    BROKER_BIN,
    ["serve", "--listen", listen, "--http-listen", "", "--database-url", `sqlite:///${path.join(dir, "broker.db")}`],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  let log = "";
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`broker did not start:\n${log}`)), START_TIMEOUT_MS);
    const read = (chunk: Buffer): void => {
      log += chunk.toString();
      onLog(chunk.toString());
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
  return { child, exited, port };
}

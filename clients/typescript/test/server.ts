// Starts a real `agentplane serve` on 127.0.0.1:0 over a fresh SQLite database and reads the
// bound address and the admin key from what it prints.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

export interface RunningServer {
  baseUrl: string;
  adminKey: string;
  stop(): Promise<void>;
}

function binary(): string {
  if (process.env.AGENTPLANE_BIN) return process.env.AGENTPLANE_BIN;
  const target = process.env.CARGO_TARGET_DIR ?? resolve(import.meta.dirname, "../../../../target");
  return join(target, "debug", "agentplane");
}

export async function startServer(): Promise<RunningServer> {
  const dir = mkdtempSync(join(tmpdir(), "agentplane-ts-"));
  const child: ChildProcess = spawn(
    binary(),
    // AGENTPLANE_E2E_DATABASE (a fresh database URL) runs the suite on another backend.
    ["serve", "--listen", "127.0.0.1:0", "--database", process.env.AGENTPLANE_E2E_DATABASE ?? `sqlite://${dir}/agentplane.db`],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  let out = "";
  let err = "";
  child.stderr?.on("data", (d: Buffer) => (err += d.toString()));
  const ready = await new Promise<{ baseUrl: string; adminKey: string }>((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`server did not start:\n${out}\n${err}`)), 30_000);
    child.once("exit", (code) => fail(new Error(`server exited with ${code}:\n${err}`)));
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      const listening = /listening on (http:\/\/[0-9.:]+)/.exec(out);
      const key = /\b(ap_[A-Za-z0-9]+)/.exec(out);
      if (listening?.[1] && key?.[1]) {
        clearTimeout(timer);
        ok({ baseUrl: listening[1], adminKey: key[1] });
      }
    });
  });
  return {
    ...ready,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

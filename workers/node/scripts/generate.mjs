// Generates src/gen from proto/tideflow/api/v1 with buf and the pinned ts-proto plugin.
// `--check` generates into a temporary directory instead and fails when src/gen differs.
import { spawnSync } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const packageDir = resolve(fileURLToPath(import.meta.url), "..", "..");
const repoRoot = resolve(packageDir, "..", "..");
const buf = join(repoRoot, "node_modules", ".bin", "buf");
const check = process.argv.includes("--check");

function run(command, args) {
  const result = spawnSync(command, args, { cwd: repoRoot, stdio: "inherit" });
  if (result.error) {
    console.error(`${command}: ${result.error.message}`);
    process.exit(2);
  }
  return result.status ?? 1;
}

const args = ["generate", "--template", "workers/node/buf.gen.yaml", "--path", "proto/tideflow/api/v1"];
if (!check) {
  process.exit(run(buf, args));
}
const out = mkdtempSync(join(tmpdir(), "tideflow-node-gen-"));
try {
  if (run(buf, [...args, "--output", out]) !== 0) process.exit(2);
  const status = run("diff", ["-r", "-u", "workers/node/src/gen", join(out, "workers/node/src/gen")]);
  if (status !== 0) {
    console.error(
      "workers/node/src/gen is stale: it differs from what proto/ generates (diff above). " +
        "Run `make proto-node` (or `npm run generate` in workers/node) and commit the result.",
    );
    process.exit(1);
  }
  console.error("workers/node/src/gen is up to date");
} finally {
  rmSync(out, { recursive: true, force: true });
}

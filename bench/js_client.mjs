// The myko.js half of bench/js_client.py: argv = url, protocol, n. Prints one JSON line:
// command round trips (RenameTarget, one at a time) and write-to-other-client latencies
// (client A's command until client B's live query shows it), in milliseconds.
import WebSocket from "ws";

import { connect } from "../myko_django/static/myko/myko.js";

const [url, protocol, n] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const options = { WebSocket, protocol };
const writer = await connect(url, options);
const reader = await connect(url, options);
await writer.command("CreateTarget", { name: "bench", category: "js-bench" }).then(async ({ id }) => {
  const live = reader.query("GetTargetsByIds", "Target", { ids: [id] });
  await live.ready();
  for (let i = 0; i < 20; i++) await writer.command("RenameTarget", { id, name: `warm ${i}` });

  const commands = [];
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    await writer.command("RenameTarget", { id, name: `c ${i}` });
    commands.push(performance.now() - started);
  }

  const updates = [];
  for (let i = 0; i < n; i++) {
    const name = `u ${i}`;
    const started = performance.now();
    const seen = new Promise((resolve) => {
      const off = live.on("change", (items) => {
        if (items.get(id)?.name === name) {
          off();
          resolve(performance.now() - started);
        }
      });
    });
    const answered = writer.command("RenameTarget", { id, name });
    updates.push(await seen);
    await answered;
  }
  console.log(JSON.stringify({ commands, updates }));
});
writer.close();
reader.close();

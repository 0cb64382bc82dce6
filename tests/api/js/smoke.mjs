// Smoke round with the official npm `e2b` SDK, configured only through E2B_* variables.
// Prints one JSON line with what it observed; the Python test asserts on it.
import { Sandbox } from 'e2b'

const out = {}
const sbx = await Sandbox.create({ metadata: { js: process.env.SMOKE_TAG }, envs: { JS_VAR: 'from-js' }, timeoutMs: 60_000 })
out.id = sbx.sandboxId
const run = await sbx.commands.run('echo "$JS_VAR"; pwd')
out.stdout = run.stdout
const home = run.stdout.trim().split('\n')[1]
await sbx.files.write(`${home}/js.txt`, 'written by js')
out.read = await sbx.files.read(`${home}/js.txt`)
const paginator = Sandbox.list({ query: { metadata: { js: process.env.SMOKE_TAG } } })
out.listed = (await paginator.nextItems()).map((s) => s.sandboxId)
out.info = (await sbx.getInfo()).metadata
await sbx.setTimeout(30_000)
const again = await Sandbox.connect(sbx.sandboxId)
out.connected = (await again.commands.run('echo connected')).stdout
out.killed = await sbx.kill()
out.runningAfterKill = await sbx.isRunning()
out.killAgain = await Sandbox.kill(out.id)
console.log(JSON.stringify(out))

// Smoke round against envd with the official e2b npm SDK in debug mode (localhost:49983).
import { Sandbox } from 'e2b'

const sandbox = await Sandbox.create()
const result = await sandbox.commands.run('echo from-node-$((20+22))')
if (result.stdout !== 'from-node-42\n') throw new Error(`stdout: ${JSON.stringify(result.stdout)}`)

const path = `/tmp/npm-smoke-${process.pid}.txt`
await sandbox.files.write(path, 'written by node')
const back = await sandbox.files.read(path)
if (back !== 'written by node') throw new Error(`read back: ${JSON.stringify(back)}`)
const entries = await sandbox.files.list('/tmp')
if (!entries.some((e) => e.path === path)) throw new Error('written file not listed')
await sandbox.files.remove(path)
if (await sandbox.files.exists(path)) throw new Error('file still exists after remove')
console.log(JSON.stringify({ ok: true, stdout: result.stdout.trim() }))

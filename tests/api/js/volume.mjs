// Volumes with the official npm `e2b` SDK, configured only through E2B_* variables
// (E2B_VOLUME_API_URL for contents). Prints one JSON line with what it observed.
import { Sandbox, Volume } from 'e2b'

const out = {}
const vol = await Volume.create(process.env.VOLUME_NAME)
out.id = vol.volumeId
await vol.writeFile('/in/from-js.txt', 'written by js', { force: true })
const sbx = await Sandbox.create({ volumeMounts: { '/data': vol }, timeoutMs: 120_000 })
try {
  out.seen = (await sbx.commands.run('cat /data/in/from-js.txt')).stdout
  await sbx.commands.run('echo -n from-sandbox > /data/out.txt')
  out.read = await vol.readFile('/out.txt')
  out.listed = (await vol.list('/')).map((e) => `${e.type}:${e.name}`).sort()
  out.mounts = (await sbx.getInfo()).volumeMounts
} finally {
  await sbx.kill()
}
out.names = (await Volume.list()).map((v) => v.name)
out.destroyed = await Volume.destroy(vol.volumeId)
console.log(JSON.stringify(out))

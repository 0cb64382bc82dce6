// Domain rules with the official npm `e2b` SDK, configured only through E2B_* variables.
// ALLOWED and OTHER name one address of the test's fake internet. Prints one JSON line.
import { Sandbox } from 'e2b'

const { ALLOWED, OTHER, OTHER_ADDRESS } = process.env
const out = {}
const sbx = await Sandbox.create({
  timeoutMs: 120_000,
  network: { allowOut: [ALLOWED], denyOut: ['0.0.0.0/0'] },
})
const get = async (name, pin) => {
  const resolve = pin ? `--resolve ${name}:80:${pin} ` : ''
  const run = await sbx.commands.run(`curl -s -m 5 ${resolve}http://${name}/ || echo refused`)
  return run.stdout.trim()
}
try {
  out.allowed = await get(ALLOWED)
  out.other = await get(OTHER, OTHER_ADDRESS)
  out.network = (await sbx.getInfo()).network
} finally {
  await sbx.kill()
}
console.log(JSON.stringify(out))

// The official npm `e2b` SDK against a server with TLS, configured as its banner says
// (E2B_API_URL https, E2B_DOMAIN, NODE_EXTRA_CA_CERTS): sandboxes by name over https.
// Prints one JSON line with what it observed.
import { Sandbox } from 'e2b'

const out = {}
const sbx = await Sandbox.create({ timeoutMs: 120_000 })
try {
  out.echo = (await sbx.commands.run('echo from-js')).stdout
  await sbx.files.write('/home/user/js.txt', 'js over tls')
  await sbx.commands.run('cd /home/user && python3 -m http.server 8081', { background: true })
  out.host = sbx.getHost(8081)
  let page
  for (let i = 0; i < 150; i++) {
    page = await fetch(`https://${out.host}/js.txt`)
    if (page.status !== 502) break
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  out.page = [await page.text(), page.status]
  const url = await sbx.downloadUrl('/home/user/js.txt', { useSignatureExpiration: 60 })
  const signed = await fetch(url)
  out.download = [await signed.text(), signed.status]
} finally {
  await sbx.kill()
}
console.log(JSON.stringify(out))

// Templates from code with the official npm SDK: build (logs streamed), use, tag, fail.
// Prints one JSON line with what it saw; the Python side checks it.
import { Sandbox, Template } from 'e2b'

const name = process.env.TPL_NAME
const logs = []
const template = Template({ fileContextPath: process.env.TPL_CONTEXT })
  .fromBaseImage()
  .setEnvs({ JS_TPL: 'from-js' })
  .copy('hello.txt', '/home/user/hello.txt', { mode: 0o640 })
  .runCmd('echo built-as-$(whoami) > /home/user/js')
  .runCmd('echo root-made > /opt/js-root', { user: 'root' })
  .setWorkdir('/home/user')

const info = await Template.build(template, `${name}:v1`, {
  onBuildLogs: (entry) => logs.push(entry.message),
})
const exists = await Template.exists(name)
const sandbox = await Sandbox.create(`${name}:v1`)
const run = await sandbox.commands.run(
  "cat hello.txt js /opt/js-root; echo $JS_TPL; stat -c '%U %a' hello.txt"
)
await sandbox.kill()
await Template.assignTags(`${name}:v1`, ['js-stable'])
const tags = (await Template.getTags(name)).map((t) => t.tag).sort()

let failure = null
try {
  await Template.build(Template().fromBaseImage().runCmd('echo js-fails && exit 7'), `${name}-bad`)
} catch (err) {
  failure = `${err.name}: ${err.message}`
}
console.log(JSON.stringify({
  templateId: info.templateId,
  stepLogs: logs.filter((m) => m.startsWith('[')),
  exists,
  stdout: run.stdout,
  tags,
  failure,
}))

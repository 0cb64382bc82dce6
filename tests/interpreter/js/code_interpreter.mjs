// The official npm @e2b/code-interpreter SDK, configured only through E2B_* variables, against
// a real server. Prints one JSON line with what it observed; the Python test asserts on it.
import { Sandbox } from '@e2b/code-interpreter'

const out = {}
const sbx = await Sandbox.create({ envs: { JS_CREATE: 'from-js' }, timeoutMs: 300_000 })
try {
  out.id = sbx.sandboxId
  await sbx.runCode('counter = 41')
  out.state = (await sbx.runCode('counter += 1\ncounter')).text

  const seen = []
  const streamed = await sbx.runCode(
    "import time\nprint('early', flush=True)\ntime.sleep(1.5)\nprint('late')",
    { onStdout: (m) => seen.push([m.line, Date.now()]) },
  )
  out.streamed = streamed.logs.stdout
  out.earlyBeforeReturnMs = Date.now() - seen[0][1]

  const plot = await sbx.runCode(
    "import matplotlib.pyplot as plt\nplt.plot([1, 2], [3, 4], label='js'); plt.title('t'); plt.show()\n" +
      "plt.pie([1, 3], labels=['a', 'b']); plt.show()",
  )
  out.pngs = plot.results.map((r) => Buffer.from(r.png, 'base64').subarray(1, 4).toString())
  out.charts = plot.results.map((r) => r.chart)
  out.formats = plot.results[0].formats()

  const failed = await sbx.runCode("raise KeyError('k')")
  out.error = { name: failed.error.name, value: failed.error.value, tb: failed.error.traceback }

  out.envs = (await sbx.runCode("import os; os.environ['JS_CREATE'] + os.environ['JS_CALL']", {
    envs: { JS_CALL: '+call' },
  })).text

  const bash = await sbx.createCodeContext({ language: 'bash' })
  await sbx.runCode('X=7', { context: bash })
  out.bash = (await sbx.runCode('echo $((X * 6))', { context: bash })).logs.stdout
  out.listed = (await sbx.listCodeContexts()).map((c) => c.language).sort()
  await sbx.removeCodeContext(bash)

  try {
    await sbx.runCode('import time; time.sleep(30)', { timeoutMs: 1500 })
    out.timedOut = false
  } catch (e) {
    out.timedOut = e.name
  }
  out.afterTimeout = (await sbx.runCode('counter')).text

  const js = await sbx.createCodeContext({ language: 'javascript', cwd: '/tmp' })
  out.jsContext = [js.language, js.cwd]
  await sbx.runCode('const items = [1, 2, 3]', { context: js })
  const jsSeen = []
  const jsRun = await sbx.runCode(
    "console.log('js says', items.length)\nawait new Promise((r) => setTimeout(r, 1000))\n" +
      'items.reduce((a, b) => a + b, 0) * 7',
    { context: js, onStdout: (m) => jsSeen.push(m.line) },
  )
  out.js = { text: jsRun.text, stdout: jsRun.logs.stdout, seen: jsSeen }
  const jsFailed = await sbx.runCode('undefinedFunction()', { context: js })
  out.jsError = [jsFailed.error.name, jsFailed.error.value]
  out.jsEnvs = (await sbx.runCode('process.env.JS_CREATE + process.env.JS_CALL', {
    context: js,
    envs: { JS_CALL: '+js' },
  })).text
  out.jsDefault = (await sbx.runCode('typeof items', { language: 'js' })).text
  await sbx.removeCodeContext(js)

  out.ts = (await sbx.runCode('const n: number = 20\nn * 2 + 2', { language: 'typescript' })).text

  const rRun = await sbx.runCode('sum(1:6) * 2', { language: 'r' })
  out.r = rRun.results.map((r) => r.text)
  out.rError = rRun.error ? `${rRun.error.name}: ${rRun.error.value}` : null

  try {
    await sbx.runCode('1', { language: 'java' })
  } catch (e) {
    out.unsupported = e.message
  }
} finally {
  out.killed = await sbx.kill()
}
console.log(JSON.stringify(out))
// runCode leaves its request timer (60 s) running when the server answers an error (the 400
// above), which would keep node alive that long after the work is done.
process.exit(0)

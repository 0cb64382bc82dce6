// The node side of our JavaScript kernel (emberbox/interpreter/js_kernel.py): evaluates cells
// one at a time in this process's global context, which persists between cells.
//
// Protocol, so user output can never corrupt it: requests arrive on the fd named by argv[2] as one JSON
// object per line ({"code": "..."}); frames leave on the fd named by argv[3], one JSON object per line:
//   {"t": "ready", "version": "v18.20.4"}                     once, at start
//   {"t": "out", "name": "stdout" | "stderr", "text": "..."}  console and process.std{out,err}
//   {"t": "done", "value": "<util.inspect>" | null}           the cell's last value
//   {"t": "done", "error": {"ename", "evalue", "traceback": [...]}}
// A cell is a vm.Script run in this (persistent) global context: the last expression is the
// value, and SIGINT breaks a synchronous cell (breakOnSigint). A cell containing `await` goes
// through node's own REPL eval instead, which rewrites top-level await (its declarations are
// hoisted to the global scope, so they persist); SIGINT ends such a cell through our listener
// (its pending work is abandoned, not stopped). The REPL's breakEvalOnSigint is not used: it
// leaves SIGINT at its default (the process dies on the next one). With argv[4] "typescript",
// each cell is TypeScript, transpiled to JavaScript first (types stripped, not checked).
'use strict'

const domain = require('domain')
const fs = require('fs')
const Module = require('module')
const net = require('net')
const path = require('path')
const readline = require('readline')
const repl = require('repl')
const util = require('util')
const vm = require('vm')
const { Writable } = require('stream')

const REQUESTS = Number(process.argv[2])
const FRAMES = Number(process.argv[3])
const TYPESCRIPT = process.argv[4] === 'typescript' // cells are TypeScript: strip types first
const CHUNK = 32 * 1024 // characters of output per frame: frames stay small
// Characters of a cell's value, and of its error's message and traceback, in its end frame: a
// frame past the kernel's line limit could not be read (a throw of a 70 MB message).
const REPLY_LIMIT = 1024 * 1024

function capped(text) {
  text = String(text)
  if (text.length <= REPLY_LIMIT) return text
  return `${text.slice(0, REPLY_LIMIT)}... [${text.length - REPLY_LIMIT} more characters cut]`
}

function cappedReply(reply) {
  if (reply.value !== undefined && reply.value !== null) return { ...reply, value: capped(reply.value) }
  if (!reply.error) return reply
  const { ename, evalue, traceback } = reply.error
  let lines = (traceback || []).map(capped)
  const total = lines.reduce((sum, line) => sum + line.length, 0)
  if (total > REPLY_LIMIT) lines = capped(lines.join('\n')).split('\n')
  return { ...reply, error: { ename: capped(ename), evalue: capped(evalue), traceback: lines } }
}

function frame(obj) {
  const line = JSON.stringify(obj) + '\n'
  fs.writeSync(FRAMES, line) // blocking pipe: the kernel reads continuously
}

function emit(name, text) {
  text = String(text)
  for (let i = 0; i < text.length; i += CHUNK) frame({ t: 'out', name, text: text.slice(i, i + CHUNK) })
}

function sink(name) {
  return new Writable({
    decodeStrings: false,
    write(chunk, _encoding, callback) {
      emit(name, typeof chunk === 'string' ? chunk : chunk.toString())
      callback()
    },
  })
}

// Every JavaScript-level write of the cells becomes a frame.
const stdoutSink = sink('stdout')
const stderrSink = sink('stderr')
globalThis.console = new console.Console({ stdout: stdoutSink, stderr: stderrSink })
for (const [stream, name] of [[process.stdout, 'stdout'], [process.stderr, 'stderr']]) {
  stream.write = function (chunk, encoding, callback) {
    emit(name, typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString())
    if (typeof encoding === 'function') encoding()
    else if (typeof callback === 'function') callback()
    return true
  }
}

// require() resolves from the context's working directory, as in a script run there.
globalThis.require = Module.createRequire(path.join(process.cwd(), '[cell]'))
globalThis.__dirname = process.cwd()

let current = null // {finish(reply)} of the running cell

const cellDomain = domain.create()
cellDomain.on('error', (err) => {
  // A cell's own throw or rejection, or an uncaught error of its pending work: it ends the cell.
  if (current) current.finish({ error: describe(err) })
  else emit('stderr', `Uncaught ${describe(err).traceback.join('\n')}\n`)
})
process.on('uncaughtException', (err) => {
  if (current) current.finish({ error: describe(err) })
  else emit('stderr', `Uncaught ${describe(err).traceback.join('\n')}\n`)
})
process.on('unhandledRejection', (err) => {
  emit('stderr', `Unhandled rejection: ${describe(err).traceback.join('\n')}\n`)
})
process.on('SIGINT', () => {
  // Only reached while a cell awaits (a synchronous one is broken by breakOnSigint).
  if (current) current.finish({ error: interrupted() })
})

const server = repl.start({
  input: new (require('stream').PassThrough)(),
  output: new Writable({ write: (_c, _e, cb) => cb() }), // the REPL's own printing is unused
  prompt: '',
  terminal: false,
  useGlobal: true,
  ignoreUndefined: true,
  domain: cellDomain,
})

function interrupted() {
  return { ename: 'Interrupted', evalue: 'the cell was interrupted', traceback: ['Interrupted: the cell was interrupted'] }
}

function describe(err) {
  if (err instanceof repl.Recoverable) err = err.err // incomplete input: a SyntaxError
  if (err && err.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') return interrupted()
  if (!(err instanceof Error) && !(err && typeof err === 'object' && 'stack' in err)) {
    const shown = util.inspect(err)
    return { ename: 'Uncaught', evalue: shown, traceback: [`Uncaught ${shown}`] }
  }
  const ename = String(err.name || (err.constructor && err.constructor.name) || 'Error')
  const evalue = String(err.message === undefined ? '' : err.message)
  let lines = String(err.stack || `${ename}: ${evalue}`).split('\n')
  // vm's displayErrors puts the offending source line (and a caret) above the header: show it
  // after the frames, so the traceback starts with "Name: message" as Python's ends with it.
  const header = lines.findIndex((line) => line.startsWith(ename))
  let source = []
  if (header > 0) {
    source = lines.slice(0, header)
    while (source.length && !source[source.length - 1].trim()) source.pop()
    lines = lines.slice(header)
  }
  // Frames of the REPL, vm and this driver say nothing about the user's code.
  const internal = /\((node:(repl|vm|domain|internal)|.*js_driver\.js)|at (node:|REPLServer|bound |ContextifyScript|runBound)/
  const cut = lines.findIndex((line, i) => i > 0 && /^\s+at /.test(line) && internal.test(line))
  if (cut > 0) lines = lines.slice(0, cut)
  return { ename, evalue, traceback: source.length ? [...lines, '', ...source] : lines }
}

// Dynamic import() from cells: node's own loader (a callback where the constant is missing).
const importModuleDynamically =
  (vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER) || ((specifier) => import(specifier))

function compile(code) {
  // As node's REPL does: `{a: 1}` is an object, not a block.
  if (/^\s*\{/.test(code) && !/;\s*$/.test(code)) {
    try {
      return new vm.Script(`(${code}\n)`, { filename: '<cell>', importModuleDynamically })
    } catch {
      // a block after all
    }
  }
  return new vm.Script(code, { filename: '<cell>', importModuleDynamically })
}

function evaluate(code, callback) {
  if (code.includes('await')) {
    // The REPL's eval rewrites top-level await (declarations hoisted, so they persist).
    server.eval(code, server.context, '<cell>', callback)
    return
  }
  let value
  try {
    value = compile(code).runInThisContext({ displayErrors: true, breakOnSigint: true })
  } catch (err) {
    callback(err)
    return
  }
  callback(null, value)
}

// TypeScript: Debian's compiler (node-typescript), loaded on the first cell. transpileModule
// only strips types and rewrites imports to require(); it does not type-check.
let ts = null
globalThis.exports = globalThis.exports || {} // what a cell with `import` compiles to needs

function transpile(code) {
  if (ts === null) ts = require('typescript')
  const out = ts.transpileModule(code, {
    fileName: 'cell.ts',
    reportDiagnostics: true,
    compilerOptions: {
      target: ts.ScriptTarget.ES2022,
      module: ts.ModuleKind.CommonJS,
      esModuleInterop: true,
    },
  })
  const problems = (out.diagnostics || []).filter((d) => d.category === ts.DiagnosticCategory.Error)
  if (problems.length) {
    const lines = problems.map((d) => {
      const text = ts.flattenDiagnosticMessageText(d.messageText, '\n')
      if (!d.file || d.start === undefined) return text
      const { line, character } = d.file.getLineAndCharacterOfPosition(d.start)
      return `<cell>:${line + 1}:${character + 1} TS${d.code}: ${text}`
    })
    const err = new SyntaxError(lines.join('; '))
    err.stack = `SyntaxError: ${lines.join('\n')}`
    throw err
  }
  return out.outputText
}

function run(code) {
  return new Promise((resolve) => {
    const cell = {
      done: false,
      finish(reply) {
        if (cell.done) return
        cell.done = true
        if (current === cell) current = null
        resolve(reply)
      },
    }
    current = cell
    try {
      if (TYPESCRIPT) code = transpile(code)
      evaluate(code, (err, value) => {
        if (err) cell.finish({ error: describe(err) })
        else cell.finish({ value: value === undefined ? null : util.inspect(value) })
      })
    } catch (err) {
      cell.finish({ error: describe(err) })
    }
  })
}

let queue = Promise.resolve()
// A libuv pipe, not fs.createReadStream: a thread-pool read blocked on it would keep
// process.exit() from ever returning.
const requests = readline.createInterface({
  input: new net.Socket({ fd: REQUESTS, readable: true, writable: false }),
})
requests.on('line', (line) => {
  const request = JSON.parse(line)
  queue = queue.then(async () => {
    const reply = await run(request.code)
    frame({ t: 'done', ...cappedReply(reply) })
  })
})
requests.on('close', () => process.exit(0)) // the kernel is gone

if (TYPESCRIPT) {
  try {
    ts = require('typescript') // now, while no cell waits (~0.3 s)
  } catch {
    // the first cell reports it
  }
}
frame({ t: 'ready', version: process.version })

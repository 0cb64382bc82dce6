// Pause, resume, snapshots and fork with the official npm `e2b` SDK, configured only through
// E2B_* variables. Prints one JSON line with what it observed; the Python test asserts on it.
import { Sandbox } from 'e2b'

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
const FILE = '/home/user/kept.txt'
const out = {}
const made = [] // every sandbox this script started, killed at the end whatever happened

// The loop writes each value beside the counter and renames it over, as
// tests/background_counter.py does: a truncating `echo >` leaves an empty file between its open
// and its write, and a read in that window once turned a CI run red.
const LOOP =
  'i=0; while true; do i=$((i+1)); echo $i > /tmp/count.new; mv /tmp/count.new /tmp/count;' +
  ' sleep 0.1; done'

async function count(sbx) {
  const text = (await sbx.files.read('/tmp/count')).trim()
  if (!/^[0-9]+$/.test(text)) throw new Error(`the counter file holds ${JSON.stringify(text)}`)
  return Number(text)
}

// Whether the loop still runs: a larger value within five seconds (a 2-core CI machine busy
// restoring other sandboxes can hold a fresh one back for a while), and the values seen.
async function counting(sbx) {
  const first = await count(sbx)
  let last = first
  for (let waited = 0; last <= first && waited < 5000; waited += 200) {
    await sleep(200)
    last = await count(sbx)
  }
  return { counting: last > first, first, last }
}

const sbx = await Sandbox.create({
  timeoutMs: 120_000,
  lifecycle: { onTimeout: 'pause', autoResume: true },
})
made.push(sbx)
try {
  out.id = sbx.sandboxId
  out.lifecycle = (await sbx.getInfo()).lifecycle
  await sbx.commands.run(
    LOOP,
    { background: true },
  )
  await sbx.files.write(FILE, 'before the pause')
  await sleep(500)
  const before = await count(sbx)

  out.paused = await sbx.pause()
  out.stateWhilePaused = (await Sandbox.getInfo(sbx.sandboxId)).state
  const back = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 120_000 })
  out.stateAfterConnect = (await back.getInfo()).state
  out.fileAfterResume = await back.files.read(FILE)
  await sleep(500)
  out.countBefore = before
  out.countAfter = await count(back)

  const snap = await back.createSnapshot({ name: `js-${process.env.SMOKE_TAG}` })
  out.snapshot = snap
  out.listed = (await Sandbox.listSnapshots({ sandboxId: sbx.sandboxId }).nextItems()).map(
    (s) => s.snapshotId,
  )
  const child = await Sandbox.create(snap.snapshotId, { timeoutMs: 60_000 })
  made.push(child)
  out.childId = child.sandboxId
  out.childFile = await child.files.read(FILE)
  await child.files.write(FILE, 'the child wrote this')
  out.sourceFileAfterChildWrite = await back.files.read(FILE)

  const forks = await back.fork({ count: 2, timeoutMs: 60_000 })
  out.forks = []
  for (const [i, fork] of forks.entries()) {
    if (fork instanceof Error) {
      out.forks.push({ error: fork.message })
      continue
    }
    made.push(fork)
    await fork.files.write(FILE, `fork ${i}`)
    out.forks.push({ id: fork.sandboxId, ...(await counting(fork)) })
  }
  out.forkFiles = await Promise.all(
    forks.filter((f) => !(f instanceof Error)).map((f) => f.files.read(FILE)),
  )
  out.sourceFileAfterForks = await back.files.read(FILE)

  // Filesystem-only: the files stay, the processes end; a connect reboots it from its files,
  // and a memory-paused sandbox connected with onResume: 'reboot' boots afresh too.
  out.countingBeforeFilesystemPause = (await counting(back)).counting
  out.filesystemOnlyPause = await back.pause({ keepMemory: false })
  out.stateAfterFilesystemPause = (await Sandbox.getInfo(back.sandboxId)).state
  const rebooted = await Sandbox.connect(back.sandboxId, { timeoutMs: 120_000 })
  out.fileAfterReboot = await rebooted.files.read(FILE)
  out.countingAfterReboot = (await counting(rebooted)).counting
  // (The child: traffic does not wake it, as it could the source, created with autoResume.)
  await child.commands.run('sleep 1000', { background: true })
  out.sleepBeforePause = (await child.commands.run('pgrep -x sleep || echo none')).stdout.trim()
  await child.pause()
  const again = await Sandbox.connect(child.sandboxId, { timeoutMs: 60_000, onResume: 'reboot' })
  out.sleepAfterRebootResume = (await again.commands.run('pgrep -x sleep || echo none'))
    .stdout.trim()

  out.snapshotDeleted = await Sandbox.deleteSnapshot(snap.snapshotId)
  out.listedAfterDelete = (await Sandbox.listSnapshots({ sandboxId: sbx.sandboxId }).nextItems())
    .length
  out.childAfterDelete = (await child.commands.run('cat ' + FILE)).stdout
} finally {
  // On a failure, where it happened: the steps done, in order (Node prints the error itself).
  console.error(`steps done: ${Object.keys(out).join(' ')}`)
  out.killed = await Promise.all(made.map((s) => s.kill().catch((err) => err.message)))
}
console.log(JSON.stringify(out))

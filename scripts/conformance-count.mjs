// Counts a result file of the HTTP cache test suite (http-cache-tests, `npm run cli`) the way
// cache-tests.fyi shows results: a test passes when its result is true and every test it
// depends on passed; "required" tests are those without a kind or of kind "required" (the
// others are "optimal" or "check"). Tests the suite does not run against a proxy
// (browser_only) are not counted.
//
// usage: node conformance-count.mjs SUITE_DIR RESULTS.json [BASELINE.json]
import fs from 'fs'
import path from 'path'
import { pathToFileURL } from 'url'

const [suiteDir, resultsFile] = process.argv.slice(2)
const load = async (p) => (await import(pathToFileURL(path.resolve(suiteDir, p)).href)).default
const suites = await load('tests/index.mjs')
suites.push(await load('tests/surrogate-control.mjs'))
const results = JSON.parse(fs.readFileSync(resultsFile, 'utf8'))

const byId = new Map()
for (const suite of suites) {
  for (const test of suite.tests) {
    if (test.browser_only !== true) byId.set(test.id, { ...test, suite: suite.id })
  }
}

const memo = new Map()
function passed (id) {
  if (memo.has(id)) return memo.get(id)
  const test = byId.get(id)
  let ok = test !== undefined && results[id] === true
  if (ok && test.depends_on) ok = test.depends_on.every(passed)
  memo.set(id, ok)
  return ok
}
const isRequired = (t) => t.kind === undefined || t.kind === 'required'

let required = 0; let requiredPassed = 0; let all = 0; let allPassed = 0
const failing = []
for (const [id, test] of byId) {
  all++
  const ok = passed(id)
  if (ok) allPassed++
  if (isRequired(test)) {
    required++
    if (ok) requiredPassed++
    else {
      const r = results[id]
      let why = r === undefined ? 'not run' : (Array.isArray(r) ? `${r[0]}: ${r[1]}` : String(r))
      if (r === true) why = 'a test it depends on failed: ' + test.depends_on.filter(d => !passed(d)).join(', ')
      failing.push(`${id}\t${why}`)
    }
  }
}
if (process.env.CONFORMANCE_LIST_FAILING) console.log(failing.join('\n'))
console.log(`required tests passed: ${requiredPassed} of ${required}`)
console.log(`all tests passed: ${allPassed} of ${all}`)
// Floors (CI): CONFORMANCE_MIN_REQUIRED / CONFORMANCE_MIN_ALL make a lower score fail.
const minRequired = Number(process.env.CONFORMANCE_MIN_REQUIRED || 0)
const minAll = Number(process.env.CONFORMANCE_MIN_ALL || 0)
if (requiredPassed < minRequired || allPassed < minAll) {
  console.error(`conformance: below the floor (required >= ${minRequired}, all >= ${minAll})`)
  process.exit(1)
}

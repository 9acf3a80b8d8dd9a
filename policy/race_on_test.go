//go:build race

package policy_test

// raceDetector: the race detector slows the model tests' reference
// evaluators tenfold; they check semantics, not concurrency, so they run
// fewer policy sets under it.
const raceDetector = true

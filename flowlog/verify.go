package flowlog

import (
	"bytes"
	"fmt"
	"sort"
)

// ChainFile is one flow file of a chain, read whole.
type ChainFile struct {
	Name string
	Data []byte
}

// Break is the first place where a chain does not hold.
type Break struct {
	File string
	Line int    // 1-based line of the record at fault; past the end for a cut tail
	Seq  uint64 // that record's number, when known
	Why  string
}

func (b *Break) String() string {
	s := fmt.Sprintf("%s:%d", b.File, b.Line)
	if b.Seq != 0 {
		s += fmt.Sprintf(" (record %d)", b.Seq)
	}
	return s + ": " + b.Why
}

// Verification is what Verify found about one chain.
type Verification struct {
	Files             []string // in chain order
	Records           int
	FirstSeq, LastSeq uint64
	// Broken is the first record at fault, nil when none is.
	Broken *Break
	// HeadChecked: a head whose MAC verified under the key names a record
	// of the chain, so nothing before that record was cut or rewritten.
	HeadChecked bool
	// Uncovered counts the records after the head's (written after the
	// head: a live file read between a write and its head, or records
	// written since the last head by a writer that crashed, or appended
	// by someone else).
	Uncovered int
	// Notes say what could not be checked.
	Notes []string
}

// Intact reports whether the chain is whole and a keyed head vouches for
// its end.
func (v *Verification) Intact() bool { return v.Broken == nil && v.HeadChecked }

// chainLine is one line of a flow file, as the chain sees it.
type chainLine struct {
	line int
	seq  uint64
	prev string
	hash string
	err  error
}

type chainFile struct {
	name  string
	lines []chainLine
	first uint64 // first record number found, for ordering
}

// Verify checks that files (one writer's, in any order: they are ordered
// by their records' numbers) form one unbroken chain, and that head, the
// live (last) file's head, verifies under key and names a record of it.
// A record changed, removed, inserted or moved breaks the link of the
// record after it (or, for the last record, the head's hash); records cut
// from the end leave the head naming a record that is gone. The first
// record at fault is named in Broken.
func Verify(files []ChainFile, head *Head, key []byte) *Verification {
	v := &Verification{}
	var chain []chainFile
	for _, f := range files {
		cf := parseChainFile(f)
		if len(cf.lines) == 0 {
			v.Notes = append(v.Notes, f.Name+" holds no records")
			continue
		}
		chain = append(chain, cf)
	}
	sort.SliceStable(chain, func(i, j int) bool { return chain[i].first < chain[j].first })
	var (
		last     *chainLine
		lastFile string
	)
	seqAt := map[uint64]chainLine{}
	for _, cf := range chain {
		v.Files = append(v.Files, cf.name)
		for i := range cf.lines {
			l := &cf.lines[i]
			fail := func(why string) *Verification {
				v.Broken = &Break{File: cf.name, Line: l.line, Seq: l.seq, Why: why}
				return v
			}
			switch {
			case l.err != nil:
				return fail("not a flow record: " + l.err.Error())
			case l.seq == 0:
				return fail("no chain fields (seq, prev): written before records were chained, or edited")
			case last == nil && l.seq == 1 && l.prev != "":
				return fail("the first record links to a record before it")
			case last == nil && l.seq > 1:
				v.Notes = append(v.Notes, fmt.Sprintf("the chain begins at record %d: the records before it are in files not given (rotated away, or removed)", l.seq))
			case last != nil && l.seq != last.seq+1:
				return fail(fmt.Sprintf("record %d follows record %d (%s:%d): records removed, inserted or reordered", l.seq, last.seq, lastFile, last.line))
			case last != nil && l.prev != last.hash:
				return fail(fmt.Sprintf("does not link to the record before it (%s:%d): one of the two was changed", lastFile, last.line))
			}
			if last == nil {
				v.FirstSeq = l.seq
			}
			last, lastFile = l, cf.name
			seqAt[l.seq] = *l
			v.Records++
		}
	}
	if last == nil {
		v.Notes = append(v.Notes, "no records")
		return v
	}
	v.LastSeq = last.seq
	liveName, live := chain[len(chain)-1].name, chain[len(chain)-1].lines
	switch {
	case head == nil:
		v.Notes = append(v.Notes, "no head: records cut from the end, or a tail rewritten whole, would not be detected")
		return v
	case key == nil:
		v.Notes = append(v.Notes, "the head is not checked: no key given")
		return v
	case !head.Valid(key):
		v.Broken = &Break{File: liveName, Line: last.line + 1, Why: "the head's MAC does not verify: the head was forged or changed, or the key is not this node's"}
		return v
	case head.Seq > last.seq:
		v.Broken = &Break{File: liveName, Line: last.line + 1, Seq: last.seq + 1,
			Why: fmt.Sprintf("truncated: the head names record %d, the file ends at record %d", head.Seq, last.seq)}
		return v
	case head.FirstSeq != 0 && head.FirstSeq != live[0].seq:
		v.Broken = &Break{File: liveName, Line: live[0].line, Seq: live[0].seq,
			Why: fmt.Sprintf("the file begins at record %d, the head says it began at record %d: records removed from its start", live[0].seq, head.FirstSeq)}
		return v
	}
	at, ok := seqAt[head.Seq]
	if !ok {
		v.Broken = &Break{File: liveName, Line: live[0].line, Seq: live[0].seq,
			Why: fmt.Sprintf("the head names record %d, which is not in the files given", head.Seq)}
		return v
	}
	if at.hash != head.Hash {
		v.Broken = &Break{File: liveName, Line: at.line, Seq: at.seq, Why: "does not match the head: the record was changed"}
		return v
	}
	v.HeadChecked = true
	v.Uncovered = int(last.seq - head.Seq)
	return v
}

// parseChainFile splits a file into lines and reads their chain fields.
func parseChainFile(f ChainFile) chainFile {
	cf := chainFile{name: f.Name}
	err := ScanLines(bytes.NewReader(f.Data), func(n int, b []byte) error {
		l := chainLine{line: n, hash: LineHash(b)}
		rec, err := ParseLine(b)
		l.seq, l.prev, l.err = rec.Seq, rec.Prev, err
		if err == nil && cf.first == 0 {
			cf.first = rec.Seq
		}
		cf.lines = append(cf.lines, l)
		return nil
	})
	if err != nil {
		n := 1
		if len(cf.lines) > 0 {
			n = cf.lines[len(cf.lines)-1].line + 1
		}
		cf.lines = append(cf.lines, chainLine{line: n, err: err})
	}
	return cf
}

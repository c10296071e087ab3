package compat

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Problem kinds: one per class of break the checker finds.
const (
	KindSectionMissing    = "section-missing"     // the destination has no such section
	KindEntryMissing      = "entry-missing"       // a key of a section or description is missing on the destination
	KindVersion           = "version"             // source version above the destination's
	KindMinimumVersion    = "minimum-version"     // source version below the destination's minimum
	KindFieldMismatch     = "field-mismatch"      // fields in order differ by name
	KindSize              = "size"                // a field's size (or element count) differs
	KindNoFurtherFields   = "dest-no-more-fields" // the source sends a field the destination does not expect
	KindExtraField        = "dest-extra-field"    // the destination expects a field the source does not send
	KindUnusedSize        = "unused-size"         // an "unused" placeholder does not cover the fields it stands for
	KindDescriptionName   = "description-name"    // a nested description has another name
	KindDescriptionAbsent = "description-missing" // a struct field has no description on the destination
	KindSubsectionMissing = "subsection-missing"  // the destination does not know a subsection
)

// MaxStatus caps the exit status, as QEMU's checker does (a shell status
// has 8 bits).
const MaxStatus = 255

// Problem is one incompatibility.
type Problem struct {
	Kind        string `json:"kind"`
	Section     string `json:"section"`
	Description string `json:"description,omitempty"`
	Field       string `json:"field,omitempty"`
	Message     string `json:"message"`
}

// String formats the problem as QEMU's checker prints it.
func (p Problem) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Section %q", p.Section)
	if p.Description != "" {
		fmt.Fprintf(&b, " Description %q", p.Description)
	}
	if p.Field != "" {
		fmt.Fprintf(&b, " Field %q", p.Field)
	}
	b.WriteString(": ")
	b.WriteString(p.Message)
	return b.String()
}

// Report is the outcome of one check.
type Report struct {
	Source      string    `json:"source"`      // source dump path
	Destination string    `json:"destination"` // destination dump path
	SrcMachine  string    `json:"source_machine"`
	DstMachine  string    `json:"destination_machine"`
	Warnings    []string  `json:"warnings"`
	Problems    []Problem `json:"problems"`
	Status      int       `json:"status"` // the exit status: problems, capped at MaxStatus
}

// Compatible reports whether no problem was found.
func (r *Report) Compatible() bool { return len(r.Problems) == 0 }

// WriteText prints the report for people: one line per problem, then a
// verdict.
func (r *Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, s := range r.Warnings {
		fmt.Fprintf(&b, "Warning: %s\n", s)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "%s\n", p)
	}
	if r.Compatible() {
		fmt.Fprintf(&b, "compatible: %s (%s) -> %s (%s)\n", r.Source, r.SrcMachine, r.Destination, r.DstMachine)
	} else {
		fmt.Fprintf(&b, "%d problem(s): %s (%s) -> %s (%s)\n", len(r.Problems), r.Source, r.SrcMachine, r.Destination, r.DstMachine)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Options adjust the checker, as the tables in QEMU's checker do.
type Options struct {
	// FieldAliases: per description (or section) name, groups of field or
	// description names that are the same thing under another name (a
	// rename that kept the wire format). Empty today.
	FieldAliases map[string][][]string
	// SectionAliases maps a section name to the name it has elsewhere.
	SectionAliases map[string]string
	// Strict adds the checks QEMU's checker lacks: element counts of
	// arrays, and fields the destination expects after the source's last
	// one (at a version the source sends). On by default in Check.
	Strict bool
}

// Check compares a source dump with a destination dump (migration from src
// to dst) with the default options.
func Check(src, dst *Dump) *Report { return CheckWith(src, dst, Options{Strict: true}) }

// CheckWith compares src with dst.
func CheckWith(src, dst *Dump, o Options) *Report {
	c := &checker{o: o, r: &Report{Source: src.Path, Destination: dst.Path, SrcMachine: src.Machine, DstMachine: dst.Machine,
		Warnings: []string{}, Problems: []Problem{}}}
	if src.Machine != dst.Machine {
		c.r.Warnings = append(c.r.Warnings, fmt.Sprintf("checking incompatible machine types: %q, %q", src.Machine, dst.Machine))
	}
	for _, s := range src.Sections {
		d := dst.Section(s.Key)
		if d == nil {
			if alias, ok := o.SectionAliases[s.Key]; ok {
				d = dst.Section(alias)
			}
		}
		if d == nil {
			c.add(Problem{Kind: KindSectionMissing, Section: s.Key, Message: "does not exist in dest"})
			continue
		}
		c.version(s.Key, "", s.VersionID, d.VersionID, &d.MinimumVersionID)
		for _, e := range s.Entries {
			if !slices.Contains(d.Entries, e) {
				c.add(Problem{Kind: KindEntryMissing, Section: s.Key, Message: fmt.Sprintf("Entry %q missing", e)})
			}
		}
		if s.Description != nil && d.Description != nil {
			c.descriptions(s.Key, s.Description, d.Description)
		}
	}
	c.r.Status = min(len(c.r.Problems), MaxStatus)
	return c.r
}

type checker struct {
	o Options
	r *Report
}

func (c *checker) add(p Problem) { c.r.Problems = append(c.r.Problems, p) }

// version is QEMU's check_version: the source's version must not be above
// the destination's, nor below the destination's minimum.
func (c *checker) version(sec, desc string, src, dst int64, dstMin *int64) {
	if src > dst {
		c.add(Problem{Kind: KindVersion, Section: sec, Description: desc, Message: fmt.Sprintf("version error: %d > %d", src, dst)})
	}
	if dstMin != nil && src < *dstMin {
		c.add(Problem{Kind: KindMinimumVersion, Section: sec, Description: desc, Message: fmt.Sprintf("minimum version error: %d < %d", src, *dstMin)})
	}
}

// same reports whether two names denote the same field or description in
// the scope of name (a rename from the alias table counts).
func (c *checker) same(scope, a, b string) bool {
	if a == b {
		return true
	}
	for _, group := range c.o.FieldAliases[scope] {
		if slices.Contains(group, a) && slices.Contains(group, b) {
			return true
		}
	}
	return false
}

func (c *checker) descriptions(sec string, s, d *Description) {
	c.version(sec, s.Name, s.VersionID, d.VersionID, d.MinimumVersionID)
	if !c.same(sec, s.Name, d.Name) {
		c.add(Problem{Kind: KindDescriptionName, Section: sec, Description: s.Name, Message: fmt.Sprintf("missing, got %q instead; skipping", d.Name)})
		return
	}
	for _, e := range s.Entries {
		if !slices.Contains(d.Entries, e) {
			c.add(Problem{Kind: KindEntryMissing, Section: sec, Description: s.Name, Message: fmt.Sprintf("Entry %q missing", e)})
			continue
		}
		switch e {
		case "Fields":
			c.fields(sec, s, d)
		case "Subsections":
			c.subsections(sec, s, d)
		}
	}
}

func (c *checker) subsections(sec string, s, d *Description) {
	for _, ss := range s.Subsections {
		found := false
		for _, ds := range d.Subsections {
			if ss.Name == ds.Name {
				found = true
				c.descriptions(sec, ss, ds)
			}
		}
		if !found {
			c.add(Problem{Kind: KindSubsectionMissing, Section: sec, Description: s.Name, Message: fmt.Sprintf("Subsection %q not found", ss.Name)})
		}
	}
}

// fieldIter walks a field list and, on request, the fields of a nested
// description in its place, returning to the outer list at its end.
type fieldIter struct {
	stack [][]*Field
}

func newFieldIter(fs []*Field) *fieldIter { return &fieldIter{stack: [][]*Field{fs}} }

type step int

const (
	stepField  step = iota // a field was returned
	stepPopped             // a nested list ended; the walk is back in its parent
	stepEnd                // the outermost list ended
)

func (it *fieldIter) next() (*Field, step) {
	top := len(it.stack) - 1
	if len(it.stack[top]) == 0 {
		if top == 0 {
			return nil, stepEnd
		}
		it.stack = it.stack[:top]
		return nil, stepPopped
	}
	f := it.stack[top][0]
	it.stack[top] = it.stack[top][1:]
	return f, stepField
}

func (it *fieldIter) descend(fs []*Field) { it.stack = append(it.stack, fs) }

func (it *fieldIter) nested() bool { return len(it.stack) > 1 }

// startsWith reports whether f is a struct whose first member is the same
// as name: a field moved into a new nested struct keeps the wire format.
func (c *checker) startsWith(f *Field, name string) bool {
	if f.Description == nil || len(f.Description.Fields) == 0 {
		return false
	}
	return c.same(f.Description.Name, f.Description.Fields[0].Field, name)
}

func isUnused(name string) bool { return name == "unused" || strings.HasPrefix(name, "unused.") }

// fields compares the fields of two descriptions in order, as QEMU's
// check_fields does: names must match (or be aliases); a field moved into
// a nested struct (or out of one) is followed; an "unused" placeholder may
// stand for fields of the same total size; sizes and versions must agree;
// nested descriptions are compared recursively.
func (c *checker) fields(sec string, sd, dd *Description) {
	desc := sd.Name
	si, di := newFieldIter(sd.Fields), newFieldIter(dd.Fields)
	advSrc, advDst := true, true
	var unused int64
	var s, d *Field
	for {
		if advSrc {
			f, st := si.next()
			if st == stepEnd {
				break
			}
			if st == stepPopped {
				continue
			}
			s = f
		} else if unused == 0 {
			advSrc = true
		}
		if advDst {
			f, st := di.next()
			if st == stepEnd {
				c.add(Problem{Kind: KindNoFurtherFields, Section: sec, Description: desc, Field: s.Field,
					Message: fmt.Sprintf("expected field %q, while dest has no further fields", s.Field)})
				return
			}
			if st == stepPopped {
				advSrc = false
				continue
			}
			d = f
		} else if unused == 0 {
			advDst = true
		}
		if unused != 0 {
			var near *Field
			if !advDst {
				unused -= s.total()
				near = s
			} else {
				unused -= d.total()
				near = d
			}
			if unused == 0 {
				advSrc, advDst = true, true
				continue
			}
			if unused < 0 {
				c.add(Problem{Kind: KindUnusedSize, Section: sec, Description: desc, Field: near.Field,
					Message: fmt.Sprintf("unused size mismatch near %q", near.Field)})
				return
			}
			continue
		}
		if !c.same(desc, s.Field, d.Field) {
			switch {
			case c.startsWith(d, s.Field):
				di.descend(d.Description.Fields)
				advSrc = false
				continue
			case c.startsWith(s, d.Field):
				si.descend(s.Description.Fields)
				advDst = false
				continue
			case isUnused(s.Field) || isUnused(d.Field):
				if s.total() == d.total() {
					continue
				}
				if isUnused(d.Field) && d.total() > s.total() {
					advDst = false
					unused = d.total() - s.total()
					continue
				}
				if isUnused(s.Field) && s.total() > d.total() {
					advSrc = false
					unused = s.total() - d.total()
					continue
				}
			}
			c.add(Problem{Kind: KindFieldMismatch, Section: sec, Description: desc, Field: s.Field,
				Message: fmt.Sprintf("expected field %q, got %q; skipping rest", s.Field, d.Field)})
			return
		}
		c.version(sec, desc, s.VersionID, d.VersionID, nil)
		if s.Description == nil {
			if s.Size != d.Size {
				c.add(Problem{Kind: KindSize, Section: sec, Description: desc, Field: s.Field, Message: fmt.Sprintf("size mismatch: %d , %d", s.Size, d.Size)})
			} else if c.o.Strict && s.total() != d.total() {
				c.add(Problem{Kind: KindSize, Section: sec, Description: desc, Field: s.Field, Message: fmt.Sprintf("element count mismatch: %d , %d", num(s), num(d))})
			}
		} else if c.o.Strict && num(s) != num(d) {
			c.add(Problem{Kind: KindSize, Section: sec, Description: desc, Field: s.Field, Message: fmt.Sprintf("element count mismatch: %d , %d", num(s), num(d))})
		}
		if s.Description != nil {
			if d.Description == nil {
				c.add(Problem{Kind: KindDescriptionAbsent, Section: sec, Description: desc, Field: s.Field, Message: "missing description"})
			} else {
				c.descriptions(sec, s.Description, d.Description)
			}
		}
	}
	if !c.o.Strict || di.nested() {
		return
	}
	// The source sent its last field; the destination must not expect
	// more at a version the source's stream has (a later-version field
	// keeps its reset value, which is fine).
	for {
		f, st := di.next()
		if st != stepField {
			return
		}
		if f.VersionID <= sd.VersionID {
			c.add(Problem{Kind: KindExtraField, Section: sec, Description: desc, Field: f.Field,
				Message: fmt.Sprintf("dest expects field %q (version %d), which the source does not send", f.Field, f.VersionID)})
			return
		}
	}
}

func num(f *Field) int64 {
	if f.Num == nil {
		return 1
	}
	return *f.Num
}

package vmstate

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"wasmvmm/host/guestmem"
)

// LoadOptions says what a stream is loaded into.
type LoadOptions struct {
	// Machine is this machine's type name; the configuration section must
	// name it. Empty skips the check.
	Machine string
	// Blocks receive the RAM pages. Their names and sizes must match the
	// stream's MEM_SIZE list exactly. Nil means the stream must carry no
	// RAM (cpr-transfer, where RAM stays in place).
	Blocks []*guestmem.Block
	// Registry holds the devices the sections load into.
	Registry *Registry
	// AllowMissingDevices accepts a stream without a section for some
	// registered device (that device keeps its state).
	AllowMissingDevices bool
	// AllowMissingVMDesc accepts a stream that ends right after EOF, as
	// QEMU does when the vmdesc is suppressed. Our writer always sends one,
	// so by default its absence is a truncation.
	AllowMissingVMDesc bool
	// MultifdFlush, when set, is called at each MULTIFD_FLUSH record (RAM
	// pages sent on parallel channels must be in place before the stream
	// goes on); an error fails the load. Nil ignores the records.
	MultifdFlush func() error
	// RAMEnded, when set, is called once the RAM section's END is read:
	// in a live migration the source has stopped its guest by then.
	RAMEnded func()
	// CopyWorkers, when above 1, copies page data into guest RAM on that
	// many goroutines while the stream is parsed (pagecopy.go): the first
	// touch of fresh guest memory then runs on several CPUs. Every page is
	// in place when the RAM section's END is read, at each MULTIFD_FLUSH,
	// and when Load returns.
	CopyWorkers int
	// MappedRAM, when set, loads a stream written with the mapped-ram
	// capability (mapped.go): the pages are read from the file only after
	// the whole stream was checked, so a bad file leaves guest RAM and the
	// devices untouched. Nil refuses such a stream.
	MappedRAM *MappedRAM
}

// LoadResult tells what a successful Load did.
type LoadResult struct {
	Bytes     int64           // stream bytes read
	Pages     uint64          // PAGE records applied
	ZeroPages uint64          // ZERO records applied
	Devices   int             // device sections applied
	VMDesc    json.RawMessage // the trailing JSON, nil when absent
}

type pendingWrite struct {
	off  int64
	data []byte
}

type staged struct {
	e         *entry
	sectionID uint32
	version   uint32
	state     *sectionState
	writes    []pendingWrite
}

type loader struct {
	r   *streamReader
	opt LoadOptions
	res LoadResult

	configSeen bool
	ids        map[uint32]string // section ids opened by START or FULL

	ramID     int64 // -1 until START "ram"
	ramState  int   // 0 none, 1 started, 2 ended
	blocks    map[string]*guestmem.Block
	lastBlock *guestmem.Block

	staged []*staged
	seen   map[*entry]bool

	// copier copies page data on workers (LoadOptions.CopyWorkers).
	copier *pageCopier

	// streamMapped is set when the configuration names the mapped-ram
	// capability; mapped lists its validated blocks (mapped.go).
	streamMapped bool
	mapped       []mappedPlan

	// pre is the source's vmdesc, read ahead from the end of a seekable
	// stream, so that a layout difference is reported at the field that
	// differs rather than at the footer. Nil for sockets and pipes.
	pre *descRoot
}

// Load reads a whole stream: RAM pages go straight into opt.Blocks as they
// arrive; device sections are decoded into staging buffers and written to
// their stores (then PostLoad runs, in stream order) only after the stream
// was read and checked through EOF and the vmdesc. On error no device store
// was written; RAM may hold pages of the failed stream.
func Load(r io.Reader, opt LoadOptions) (*LoadResult, error) {
	var pre *descRoot
	if rs, ok := r.(io.ReadSeeker); ok {
		var err error
		if pre, err = peekVMDesc(rs); err != nil {
			return nil, err
		}
	}
	return load(newStreamReader(r), pre, opt)
}

// LoadBytes is Load for a stream already in memory, such as a snapshot
// file mapped by the caller: page data is copied once, from data to guest
// RAM, with no read buffer between them. data must stay mapped and
// unchanged until LoadBytes returns.
func LoadBytes(data []byte, opt LoadOptions) (*LoadResult, error) {
	pre, err := peekVMDesc(bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	return load(newMemReader(data), pre, opt)
}

func newLoader(r *streamReader, opt LoadOptions) *loader {
	l := &loader{r: r, opt: opt, ids: map[uint32]string{}, ramID: -1,
		blocks: map[string]*guestmem.Block{}, seen: map[*entry]bool{}}
	if opt.Registry == nil {
		l.opt.Registry = NewRegistry()
	}
	for _, b := range opt.Blocks {
		l.blocks[b.Name] = b
	}
	return l
}

func load(r *streamReader, pre *descRoot, opt LoadOptions) (*LoadResult, error) {
	l := newLoader(r, opt)
	l.pre = pre
	if opt.CopyWorkers > 1 {
		l.copier = newPageCopier(opt.CopyWorkers)
		// Also when a fault in a mapped stream unwinds the load as a panic.
		defer l.copier.close()
	}
	err := l.run()
	if l.copier != nil {
		// No worker writes guest RAM once Load returns.
		if cerr := l.copier.close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return nil, err
	}
	if len(l.mapped) > 0 {
		if err := l.loadMapped(); err != nil {
			return nil, err
		}
	}
	if err := l.apply(); err != nil {
		return nil, err
	}
	l.res.Bytes = l.r.off
	return &l.res, nil
}

func (l *loader) run() error {
	magic, err := l.r.be32()
	if err != nil {
		return nowhere.wrap(0, fmt.Errorf("file magic: %w", err))
	}
	if magic != FileMagic {
		return nowhere.err(0, "bad file magic %#08x, want %#08x (\"QEVM\")", magic, FileMagic)
	}
	version, err := l.r.be32()
	if err != nil {
		return nowhere.wrap(4, fmt.Errorf("file version: %w", err))
	}
	if version != FileVersion {
		return nowhere.err(4, "unsupported stream version %d, want %d", version, FileVersion)
	}
	for {
		off := l.r.off
		t, err := l.r.u8()
		if err != nil {
			return nowhere.wrap(off, fmt.Errorf("section type: %w", err))
		}
		if t != SectionConfiguration && !l.configSeen && l.opt.Machine != "" {
			return nowhere.err(off, "section type %#02x before the configuration section; this machine (%q) requires one first", t, l.opt.Machine)
		}
		switch t {
		case SectionConfiguration:
			err = l.configuration(off)
		case SectionStart, SectionFull:
			err = l.sectionStartFull(off, t)
		case SectionPart, SectionEnd:
			err = l.sectionPartEnd(off, t)
		case SectionCommand:
			err = l.command(off)
		case SectionEOF:
			return l.finish(off)
		case SectionFooter:
			err = nowhere.err(off, "section footer outside a section")
		case SectionSubsection:
			err = nowhere.err(off, "subsection outside a section")
		case SectionVMDescription:
			err = nowhere.err(off, "vmdesc before EOF")
		default:
			err = nowhere.err(off, "unknown section type %#02x", t)
		}
		if err != nil {
			return err
		}
	}
}

func (l *loader) configuration(off int64) error {
	w := where{section: configurationName, sectionID: -1}
	if l.configSeen {
		return w.err(off, "second configuration section")
	}
	l.configSeen = true
	n, err := l.r.be32()
	if err != nil {
		return w.wrap(l.r.off, err)
	}
	if n > MaxMachineNameLen {
		return w.err(off+1, "machine type name of %d bytes exceeds %d", n, MaxMachineNameLen)
	}
	name := make([]byte, n)
	if err := l.r.full(name); err != nil {
		return w.wrap(off+5, fmt.Errorf("machine type name: %w", err))
	}
	if l.opt.Machine != "" && string(name) != l.opt.Machine {
		return w.err(off+5, "machine type %q in the stream, this machine is %q", name, l.opt.Machine)
	}
	if pk := l.r.peek(2); len(pk) == 2 && pk[0] == SectionSubsection {
		hdr := l.r.peek(2 + int(pk[1])) // the peeks share a buffer: slice the second only
		if string(hdr[2:]) == capabilitiesName {
			if err := l.capabilities(l.r.off, len(hdr)); err != nil {
				return err
			}
		} else {
			return w.err(l.r.off, "configuration subsection %q (target page bits or uuid) is not supported", hdr[2:])
		}
		if pk := l.r.peek(1); len(pk) == 1 && pk[0] == SectionSubsection {
			return w.err(l.r.off, "configuration subsection after the capabilities (target page bits or uuid) is not supported")
		}
	}
	return l.checkMappedCapability(off)
}

func (l *loader) command(off int64) error {
	var b [4]byte
	if err := l.r.full(b[:]); err != nil {
		return nowhere.wrap(off, fmt.Errorf("command header: %w", err))
	}
	cmd, n := int(b[0])<<8|int(b[1]), int(b[2])<<8|int(b[3])
	if cmd != cmdSwitchoverStart || n != 0 {
		return nowhere.err(off, "QEMU_VM_COMMAND %d (%d bytes) is not supported", cmd, n)
	}
	return nil
}

func (l *loader) sectionStartFull(off int64, t byte) error {
	id, err := l.r.be32()
	if err != nil {
		return nowhere.wrap(off+1, fmt.Errorf("section id: %w", err))
	}
	w := where{sectionID: int64(id)}
	name, err := l.r.str()
	if err != nil {
		return w.wrap(off+5, fmt.Errorf("section name: %w", err))
	}
	w.section = name
	inst, err := l.r.be32()
	if err != nil {
		return w.wrap(l.r.off, fmt.Errorf("instance id: %w", err))
	}
	version, err := l.r.be32()
	if err != nil {
		return w.wrap(l.r.off, fmt.Errorf("version: %w", err))
	}
	if prev, dup := l.ids[id]; dup {
		return w.err(off, "section id %d was already used by section %q", id, prev)
	}
	l.ids[id] = name
	if name == RAMSectionName && inst == 0 {
		if t != SectionStart {
			return w.err(off, "RAM must come as START/PART/END sections, not FULL")
		}
		return l.ramStart(off, id, version, w)
	}
	if t == SectionStart {
		return w.err(off, "iterative section %q (instance %d) is unknown; only %q is iterative here", name, inst, RAMSectionName)
	}
	return l.deviceSection(off, id, name, inst, version, w)
}

func (l *loader) sectionPartEnd(off int64, t byte) error {
	id, err := l.r.be32()
	if err != nil {
		return nowhere.wrap(off+1, fmt.Errorf("section id: %w", err))
	}
	w := where{sectionID: int64(id)}
	if l.ramID < 0 || uint32(l.ramID) != id {
		if name, ok := l.ids[id]; ok {
			w.section = name
			return w.err(off, "PART/END for a section that is not iterative")
		}
		return w.err(off, "PART/END for section id %d, which no START opened", id)
	}
	w.section = RAMSectionName
	if l.ramState != 1 {
		return w.err(off, "RAM PART/END after the RAM section's END")
	}
	if err := l.ramRecords(w, false); err != nil {
		return err
	}
	if err := l.footer(id, w, "the RAM records"); err != nil {
		return err
	}
	if t == SectionEnd {
		l.ramState = 2
		if l.opt.RAMEnded != nil {
			l.opt.RAMEnded()
		}
	}
	return nil
}

func (l *loader) footer(id uint32, w where, after string) error {
	off := l.r.off
	b, err := l.r.u8()
	if err != nil {
		return w.wrap(off, fmt.Errorf("section footer: %w", err))
	}
	if b != SectionFooter {
		return w.err(off, "expected the section footer (0x7e) after %s, found %#02x: the source's field layout differs from this machine's (a field of another size, or fields this machine lacks or does not know)", after, b)
	}
	got, err := l.r.be32()
	if err != nil {
		return w.wrap(off+1, fmt.Errorf("section footer: %w", err))
	}
	if got != id {
		return w.err(off, "section footer names section id %d, want %d", got, id)
	}
	return nil
}

// ---- RAM ----

func (l *loader) ramStart(off int64, id, version uint32, w where) error {
	if l.ramID >= 0 {
		return w.err(off, "second RAM section")
	}
	if version != RAMSectionVersion {
		return w.err(off, "RAM section version %d, want %d", version, RAMSectionVersion)
	}
	if len(l.opt.Blocks) == 0 {
		return w.err(off, "the stream carries RAM, but this load has no RAM blocks to fill (cpr-transfer keeps RAM in place)")
	}
	if l.opt.MappedRAM != nil && !l.streamMapped {
		return w.err(off, "capability %q is on here, but the stream was written without it", MappedRAMCapability)
	}
	l.ramID = int64(id)
	l.ramState = 1
	if err := l.ramRecords(w, true); err != nil {
		return err
	}
	return l.footer(id, w, "the RAM block list")
}

func (l *loader) ramRecords(w where, start bool) error {
	listed := false
	for {
		off := l.r.off
		v, err := l.r.be64()
		if err != nil {
			return w.wrap(off, fmt.Errorf("RAM record: %w", err))
		}
		flags, addr := v&(PageSize-1), v&^uint64(PageSize-1)
		switch flags &^ RAMFlagContinue {
		case RAMFlagEOS:
			if start && !listed {
				return w.err(off, "RAM START without the MEM_SIZE block list")
			}
			return l.flushPages(off, w)
		case RAMFlagMultifdFlush:
			if l.opt.MultifdFlush != nil {
				// The parallel channels' pages of the next pass may be
				// the ones still queued here.
				if err := l.flushPages(off, w); err != nil {
					return err
				}
				if err := l.opt.MultifdFlush(); err != nil {
					return w.wrap(off, fmt.Errorf("multifd flush: %w", err))
				}
			}
		case RAMFlagMemSize:
			if !start || listed {
				return w.err(off, "MEM_SIZE record outside the start of the RAM section")
			}
			if err := l.ramBlockList(addr, w); err != nil {
				return err
			}
			listed = true
		case RAMFlagZero, RAMFlagPage:
			if l.streamMapped {
				return w.err(off, "page record in a mapped-ram stream (its pages are in the file's pages regions)")
			}
			if start && !listed {
				return w.err(off, "page record before the MEM_SIZE block list")
			}
			if err := l.ramPage(off, flags, addr, w); err != nil {
				return err
			}
		default:
			return w.err(off, "unsupported RAM record flags %#x", flags)
		}
	}
}

func (l *loader) ramBlockList(total uint64, w where) error {
	seen := map[string]bool{}
	for total > 0 {
		off := l.r.off
		name, err := l.r.str()
		if err != nil {
			return w.wrap(off, fmt.Errorf("RAM block name: %w", err))
		}
		size, err := l.r.be64()
		if err != nil {
			return w.wrap(off, fmt.Errorf("RAM block %q size: %w", name, err))
		}
		b := l.blocks[name]
		if b == nil {
			have := map[string]bool{}
			for n := range l.blocks {
				have[n] = true
			}
			return w.err(off, "RAM block %q is not on this machine (it has %s)", name, strings.Join(sortedNames(have), ", "))
		}
		if seen[name] {
			return w.err(off, "RAM block %q listed twice", name)
		}
		seen[name] = true
		if size != b.Size() {
			return w.err(off, "RAM block %q has %#x bytes in the stream, %#x on this machine", name, size, b.Size())
		}
		if size > total {
			return w.err(off, "RAM block sizes exceed the announced total")
		}
		total -= size
		if l.streamMapped {
			if err := l.mappedHeader(b, w); err != nil {
				return err
			}
		}
	}
	for _, b := range l.opt.Blocks {
		if !seen[b.Name] {
			return w.err(l.r.off, "RAM block %q of this machine is missing from the stream's block list", b.Name)
		}
	}
	return nil
}

func (l *loader) ramPage(off int64, flags, addr uint64, w where) error {
	b := l.lastBlock
	if flags&RAMFlagContinue != 0 {
		if b == nil {
			return w.err(off, "CONTINUE page record without a previous block")
		}
	} else {
		name, err := l.r.str()
		if err != nil {
			return w.wrap(off+8, fmt.Errorf("RAM block name: %w", err))
		}
		b = l.blocks[name]
		if b == nil {
			return w.err(off+8, "page for RAM block %q, which is not on this machine", name)
		}
		l.lastBlock = b
	}
	if addr >= b.Size() {
		return w.err(off, "page at %#x is outside RAM block %q (%#x bytes)", addr, b.Name, b.Size())
	}
	page := b.Mem[addr : addr+PageSize]
	if flags&RAMFlagZero != 0 {
		fill, err := l.r.u8()
		if err != nil {
			return w.wrap(l.r.off, fmt.Errorf("zero page fill byte: %w", err))
		}
		if fill != 0 {
			return w.err(l.r.off-1, "zero page of RAM block %q at %#x has fill byte %#02x, want 0", b.Name, addr, fill)
		}
		l.res.ZeroPages++
		if l.copier != nil {
			l.copier.add(addr, page, nil)
			return nil
		}
		if !bytes.Equal(page, zeroPage[:]) {
			clear(page)
		}
		return nil
	}
	if l.copier != nil {
		return l.queuePage(b, addr, page, w)
	}
	if err := l.r.full(page); err != nil {
		return w.wrap(l.r.off, fmt.Errorf("page data of RAM block %q at %#x: %w", b.Name, addr, err))
	}
	l.res.Pages++
	return nil
}

// queuePage reads a page's data and hands it to the copy workers: from an
// in-memory stream the data stays where it is until copied, from a reader
// it goes to room in the worker's batch.
func (l *loader) queuePage(b *guestmem.Block, addr uint64, page []byte, w where) error {
	var src []byte
	if l.r.br == nil { // in memory: the data stays where it is
		if p := l.r.peek(PageSize); len(p) == PageSize {
			src = p[:PageSize:PageSize]
			l.r.discard(PageSize)
		}
	}
	if src == nil {
		src = l.copier.batch(addr).slot()
		if err := l.r.full(src); err != nil {
			return w.wrap(l.r.off, fmt.Errorf("page data of RAM block %q at %#x: %w", b.Name, addr, err))
		}
	}
	l.copier.add(addr, page, src)
	l.res.Pages++
	return nil
}

// flushPages waits until the copy workers have put every queued page in
// place.
func (l *loader) flushPages(off int64, w where) error {
	if l.copier == nil {
		return nil
	}
	if err := l.copier.flush(); err != nil {
		return w.wrap(off, err)
	}
	return nil
}

// ---- devices ----

func (l *loader) deviceSection(off int64, id uint32, name string, inst, version uint32, w where) error {
	e := l.opt.Registry.lookup(name, inst)
	if e == nil {
		return w.err(off, "no device %q instance %d on this machine", name, inst)
	}
	if l.seen[e] {
		return w.err(off, "second section for device %q instance %d", name, inst)
	}
	l.seen[e] = true
	sec := e.plan.sec
	if version > sec.VersionID {
		return w.err(off, "version %d is newer than this machine's %d", version, sec.VersionID)
	}
	if version < sec.MinimumVersionID {
		return w.err(off, "version %d is older than this machine's minimum %d", version, sec.MinimumVersionID)
	}
	st := &staged{e: e, sectionID: id, version: version}
	src := l.preDevice(name, inst)
	if err := checkPre(src, e.plan, version, w, off); err != nil {
		return err
	}
	state, last, err := l.decodeSection(e, e.plan, version, w, st, src)
	if err != nil {
		return err
	}
	st.state = state
	if err := l.footer(id, w, last); err != nil {
		return err
	}
	l.staged = append(l.staged, st)
	return nil
}

// decodeSection reads a section's (or subsection's) fields and subsections
// into st's staging writes. It returns what was read and a description of
// the last item, for footer messages.
func (l *loader) decodeSection(e *entry, p *plan, version uint32, w where, st *staged, src *descSection) (*sectionState, string, error) {
	ss := &sectionState{p: p, version: version}
	last := "the section header"
	for i := range p.fields {
		pf := &p.fields[i]
		if !pf.exists(version) {
			continue
		}
		img := make([]byte, int(pf.f.Size)*int(pf.f.Count))
		if pf.nested != nil {
			// Fields a nested struct does not send keep their current value.
			if _, err := e.dev.Store.ReadAt(img, int64(pf.f.Offset)); err != nil {
				fw := w
				fw.field = pf.f.Name
				return nil, "", fw.err(l.r.off, "read the store: %v", err)
			}
		}
		off := l.r.off
		if path, err := l.decodeElems(pf, img, pf.f.Name); err != nil {
			fw := w
			fw.field = path
			return nil, "", fw.wrap(off, err)
		}
		st.writes = append(st.writes, pendingWrite{off: int64(pf.f.Offset), data: img})
		last = fmt.Sprintf("field %q", pf.f.Name)
	}
	got := map[*plan]bool{}
	for {
		pk := l.r.peek(2)
		if len(pk) == 1 && pk[0] == SectionSubsection {
			return nil, "", w.err(l.r.off, "%w: subsection header cut short", ErrTruncated)
		}
		if len(pk) < 2 || pk[0] != SectionSubsection || int(pk[1]) < len(p.wireName)+1 {
			return ss, last, nil
		}
		off := l.r.off
		n := int(pk[1])
		hdr := l.r.peek(2 + n)
		if len(hdr) < 2+n {
			return nil, "", w.err(off, "%w: subsection header cut short", ErrTruncated)
		}
		name := string(hdr[2:])
		if !strings.HasPrefix(name, p.wireName) {
			return ss, last, nil
		}
		var sp *plan
		for _, s := range p.subs {
			if s.wireName == name {
				sp = s
			}
		}
		sw := w
		sw.subsection = name
		if sp == nil {
			known := map[string]bool{}
			for _, s := range p.subs {
				known[s.wireName] = true
			}
			return nil, "", sw.err(off, "unknown subsection (this machine knows %s)", quoteList(sortedNames(known)))
		}
		if got[sp] {
			return nil, "", sw.err(off, "subsection sent twice")
		}
		got[sp] = true
		l.r.discard(2 + n)
		ver, err := l.r.be32()
		if err != nil {
			return nil, "", sw.wrap(l.r.off, fmt.Errorf("subsection version: %w", err))
		}
		if ver > sp.sec.VersionID {
			return nil, "", sw.err(off, "version %d is newer than this machine's %d", ver, sp.sec.VersionID)
		}
		if ver < sp.sec.MinimumVersionID {
			return nil, "", sw.err(off, "version %d is older than this machine's minimum %d", ver, sp.sec.MinimumVersionID)
		}
		var srcSub *descSection
		if src != nil {
			for _, d := range src.Subsections {
				if d != nil && d.VMSDName == name {
					srcSub = d
				}
			}
		}
		if err := checkPre(srcSub, sp, ver, sw, off); err != nil {
			return nil, "", err
		}
		sub, _, err := l.decodeSection(e, sp, ver, sw, st, srcSub)
		if err != nil {
			return nil, "", err
		}
		ss.subs = append(ss.subs, sub)
		last = fmt.Sprintf("subsection %q", name)
	}
}

// decodeElems reads a field's elements into img (store form). It returns
// the path of the failing field for nested structs.
func (l *loader) decodeElems(pf *planField, img []byte, path string) (string, error) {
	if pf.nested == nil {
		if err := l.r.full(img); err != nil {
			return path, err
		}
		swapInPlace(pf, img)
		return path, nil
	}
	size := int(pf.f.Size)
	nested := pf.nested
	for i := 0; i < int(pf.f.Count); i++ {
		el := img[i*size : (i+1)*size]
		for j := range nested.fields {
			nf := &nested.fields[j]
			if !nf.exists(nested.sec.VersionID) {
				continue
			}
			lo := int(nf.f.Offset)
			sub := el[lo : lo+int(nf.f.Size)*int(nf.f.Count)]
			// The path is built only for an error: formatting it for every
			// element dominated the load of a device's state.
			if rel, err := l.decodeElems(nf, sub, ""); err != nil {
				elemPath := path
				if pf.f.Count > 1 {
					elemPath = fmt.Sprintf("%s[%d]", path, i)
				}
				return elemPath + "." + nf.f.Name + rel, err
			}
		}
	}
	return path, nil
}

func quoteList(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = fmt.Sprintf("%q", n)
	}
	return strings.Join(q, ", ")
}

// ---- EOF, vmdesc, apply ----

func (l *loader) finish(eofOff int64) error {
	if pk := l.r.peek(1); len(pk) == 0 {
		if !l.opt.AllowMissingVMDesc {
			return nowhere.err(l.r.off, "%w: the stream ends after EOF without the vmdesc", ErrTruncated)
		}
	} else {
		if err := l.vmdesc(); err != nil {
			return err
		}
	}
	if len(l.opt.Blocks) > 0 && l.ramState != 2 {
		what := "no RAM section"
		if l.ramState == 1 {
			what = "the RAM section was not ended"
		}
		return nowhere.err(eofOff, "EOF, but %s; this load expects RAM", what)
	}
	if !l.opt.AllowMissingDevices {
		for _, e := range l.opt.Registry.entries {
			if !l.seen[e] {
				return nowhere.err(eofOff, "EOF, but device %q instance %d of this machine had no section", e.dev.Name, e.dev.InstanceID)
			}
		}
	}
	return nil
}

func (l *loader) vmdesc() error {
	off := l.r.off
	w := where{section: "vmdesc", sectionID: -1}
	t, _ := l.r.u8()
	if t != SectionVMDescription {
		return w.err(off, "expected the vmdesc (0x06) after EOF, found %#02x", t)
	}
	n, err := l.r.be32()
	if err != nil {
		return w.wrap(off+1, fmt.Errorf("length: %w", err))
	}
	if n > MaxVMDescLen {
		return w.err(off+1, "length %d exceeds %d", n, MaxVMDescLen)
	}
	js, err := l.r.readVar(int64(n))
	if errors.Is(err, ErrTruncated) {
		return w.err(l.r.off, "%w: need %d bytes of JSON, the stream ends after %d", ErrTruncated, n, l.r.off-(off+5))
	}
	if err != nil {
		return w.wrap(l.r.off, err)
	}
	jsOff := off + 5
	var root descRoot
	dec := json.NewDecoder(bytes.NewReader(js))
	if err := dec.Decode(&root); err != nil {
		return w.err(jsOff, "malformed JSON: %v", err)
	}
	if rest := bytes.TrimSpace(js[dec.InputOffset():]); len(rest) != 0 {
		return w.err(jsOff+dec.InputOffset(), "malformed JSON: trailing data")
	}
	if root.PageSize != PageSize {
		return w.err(jsOff, "page_size %d, want %d", root.PageSize, PageSize)
	}
	if len(root.Devices) != len(l.staged) {
		return w.err(jsOff, "describes %d device sections, the stream carried %d", len(root.Devices), len(l.staged))
	}
	for i, d := range root.Devices {
		st := l.staged[i]
		dw := where{section: st.e.dev.Name, sectionID: int64(st.sectionID)}
		if d == nil || d.Name != st.e.dev.Name || d.InstanceID == nil || *d.InstanceID != int64(st.e.dev.InstanceID) {
			return dw.err(jsOff, "vmdesc entry %d does not describe this section", i)
		}
		if field, err := compareDesc(d, describeDevice(st.e, st.state)); err != nil {
			dw.field = field
			return dw.err(jsOff, "vmdesc: %v", err)
		}
	}
	l.res.VMDesc = js
	return nil
}

// apply writes every staged device section to its store, then runs the
// PostLoad hooks in stream order.
func (l *loader) apply() error {
	for _, st := range l.staged {
		for _, pw := range st.writes {
			if _, err := st.e.dev.Store.WriteAt(pw.data, pw.off); err != nil {
				return fmt.Errorf("vmstate load: device %s (instance %d): write store at %#x: %w", st.e.dev.Name, st.e.dev.InstanceID, pw.off, err)
			}
		}
	}
	var errs []error
	for _, st := range l.staged {
		if h := st.e.dev.Hooks; h != nil {
			if err := h.PostLoad(st.version); err != nil {
				errs = append(errs, fmt.Errorf("vmstate load: device %s (instance %d): post-load (version %d): %w", st.e.dev.Name, st.e.dev.InstanceID, st.version, err))
			}
		}
	}
	l.res.Devices = len(l.staged)
	return errors.Join(errs...)
}

// preDevice returns the read-ahead description of a device section.
func (l *loader) preDevice(name string, inst uint32) *descSection {
	if l.pre == nil {
		return nil
	}
	for _, d := range l.pre.Devices {
		if d != nil && d.Name == name && d.InstanceID != nil && *d.InstanceID == int64(inst) {
			return d
		}
	}
	return nil
}

// checkPre compares the source's description of a (sub)section's fields
// with what this machine expects at that version, before decoding.
func checkPre(src *descSection, p *plan, version uint32, w where, off int64) error {
	if src == nil {
		return nil
	}
	if field, err := compareFields(src.Fields, describeFields(p, version)); err != nil {
		w.field = field
		return w.err(off, "%v", err)
	}
	return nil
}

// peekVMDesc reads the vmdesc from the end of a seekable stream and seeks
// back. A stream without a well-formed vmdesc at its end gives nil; the
// sequential read reports what is wrong with it.
func peekVMDesc(rs io.ReadSeeker) (*descRoot, error) {
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, nil // not really seekable (a pipe behind *os.File)
	}
	js, _, err := tailVMDesc(rs, start)
	if _, serr := rs.Seek(start, io.SeekStart); serr != nil {
		return nil, fmt.Errorf("vmstate load: seek back to the stream start: %w", serr)
	}
	if err != nil || js == nil {
		return nil, nil
	}
	var root descRoot
	if json.Unmarshal(js, &root) != nil {
		return nil, nil
	}
	return &root, nil
}

package bench

import (
	"fmt"
	"io"
	"math"
)

// migKey names one cell of the live migration table: a guest size, a case
// and a VMM (wasmvmm, wasmvmm-mfN, qemu).
type migKey struct {
	size int
	cas  string
	vmm  string
}

// migSummary gathers the runs of every cell and prints their medians.
type migSummary struct {
	order []migKey // cells in the order first seen
	runs  map[migKey][]migResult
	ram   map[int][]float64 // RAM throughput against the socket copy, per size
}

func newMigSummary() *migSummary {
	return &migSummary{runs: map[migKey][]migResult{}, ram: map[int][]float64{}}
}

func (s *migSummary) add(size int, cas, vmm string, r migResult) {
	k := migKey{size, cas, vmm}
	if _, ok := s.runs[k]; !ok {
		s.order = append(s.order, k)
	}
	s.runs[k] = append(s.runs[k], r)
}

func (s *migSummary) addRAMRatio(size int, ratio float64) {
	s.ram[size] = append(s.ram[size], ratio)
}

// cellFigures returns the median total time and pause in ms, and how many
// runs completed. A run that did not complete counts as +Inf, so a cell
// whose runs mostly failed has no finite median.
func cellFigures(rs []migResult) (total, pause float64, done int) {
	var ts, ps []float64
	for _, r := range rs {
		if !r.converged {
			ts, ps = append(ts, math.Inf(1)), append(ps, math.Inf(1))
			continue
		}
		done++
		ts = append(ts, ms(r.total))
		ps = append(ps, ms(r.pause))
	}
	return median(ts), median(ps), done
}

// spread is the smallest and largest completed total time, in ms.
func spread(rs []migResult) (lo, hi float64) {
	lo, hi = math.Inf(1), math.Inf(-1)
	for _, r := range rs {
		if r.converged {
			lo, hi = min(lo, ms(r.total)), max(hi, ms(r.total))
		}
	}
	return lo, hi
}

// print writes one line per cell (medians over its runs) and, where QEMU
// ran the same cell, whether wasmvmm's medians are ahead of QEMU's.
func (s *migSummary) print(w io.Writer) {
	fmt.Fprintln(w, "medians over the runs (total time range in brackets):")
	for _, k := range s.order {
		rs := s.runs[k]
		total, pause, done := cellFigures(rs)
		lo, hi := spread(rs)
		fmt.Fprintf(w, "%4d MiB %-19s %-11s total %8.1f ms [%.0f-%.0f]  pause %6.1f ms  completed %d/%d",
			k.size, k.cas, k.vmm, total, lo, hi, pause, done, len(rs))
		if k.vmm == "wasmvmm" {
			if q, ok := s.runs[migKey{k.size, k.cas, "qemu"}]; ok {
				qt, qp, _ := cellFigures(q)
				fmt.Fprintf(w, "  vs qemu: total %s, pause %s", ahead(total, qt), ahead(pause, qp))
			}
		}
		fmt.Fprintln(w)
	}
	for size, v := range s.ram {
		fmt.Fprintf(w, "%4d MiB RAM throughput vs plain socket copy: median %.2f over %d runs\n", size, median(v), len(v))
	}
}

// ahead compares two medians (ms; +Inf when most runs did not complete).
func ahead(ours, theirs float64) string {
	switch {
	case math.IsInf(ours, 1) && math.IsInf(theirs, 1):
		return "neither completes"
	case ours < theirs:
		return "ahead"
	case ours == theirs:
		return "even"
	}
	return fmt.Sprintf("behind by %.1f ms", ours-theirs)
}

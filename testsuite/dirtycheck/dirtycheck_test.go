package dirtycheck

import "testing"

func TestFromValues(t *testing.T) {
	good := map[string]struct {
		vals     []byte
		value    uint8
		boundary uint64
	}{
		"all equal":     {[]byte{5, 5, 5, 5}, 5, 0},
		"mid pass":      {[]byte{6, 6, 5, 5}, 5, 2},
		"wrap":          {[]byte{0, 0, 255, 255}, 255, 2},
		"one step left": {[]byte{1, 1, 1, 0}, 0, 3},
	}
	for name, c := range good {
		p, err := FromValues(c.vals, 0)
		if err != nil || p.Value != c.value || p.Boundary != c.boundary {
			t.Errorf("%s: %+v, %v", name, p, err)
		}
	}
	for name, vals := range map[string][]byte{
		"two steps":      {7, 7, 5, 5},
		"hole":           {6, 5, 6, 5},
		"stale page":     {5, 5, 4, 5},
		"boundary twice": {6, 5, 5, 6},
	} {
		if p, err := FromValues(vals, 0); err == nil {
			t.Errorf("%s: accepted as %+v", name, p)
		}
	}
}

package netns

import (
	"encoding/json"
	"testing"
)

// TestOverlayAddressIsKept: the subnet's last host address is the
// overlay's, and the IPAM range given to containers ends before it.
func TestOverlayAddressIsKept(t *testing.T) {
	tests := []struct{ cidr, overlay, rangeEnd string }{
		{"10.88.0.0/16", "10.88.255.254", "10.88.255.253"},
		{"10.201.7.0/24", "10.201.7.254", "10.201.7.253"},
		{"192.168.5.8/29", "192.168.5.14", "192.168.5.13"},
		{"192.168.5.4/30", "", ""}, // too small to keep one
	}
	for _, tt := range tests {
		n, err := New(Config{Node: "t", CIDR: tt.cidr, BinDir: "/usr/lib/cni", StateDir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if got := n.OverlayAddress(); got != tt.overlay {
			t.Errorf("%s: overlay address %q, want %q", tt.cidr, got, tt.overlay)
		}
		var conf struct {
			Plugins []struct {
				IPAM struct {
					Ranges [][]map[string]string `json:"ranges"`
				} `json:"ipam"`
			} `json:"plugins"`
		}
		if err := json.Unmarshal(n.bridge.Bytes, &conf); err != nil {
			t.Fatal(err)
		}
		if got := conf.Plugins[0].IPAM.Ranges[0][0]["rangeEnd"]; got != tt.rangeEnd {
			t.Errorf("%s: containers' range ends at %q, want %q", tt.cidr, got, tt.rangeEnd)
		}
	}
}

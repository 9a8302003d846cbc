package specinfo

import (
	"fmt"
	"testing"
)

func TestOverlayGroups(t *testing.T) {
	tests := []struct {
		network string
		want    string
	}{
		{"", "[global/app service/app/web]"},
		{"network: {overlays: {global: {enabled: false}}}", "[service/app/web]"},
		{"network: {overlays: {service: {enabled: false}}}", "[global/app]"},
		{"network: {overlays: {service: {enabled: false}, global: {enabled: false}}}", "[]"},
	}
	for _, tt := range tests {
		d, err := Parse("t.yaml", []byte("version: v1\ndeployment: app\nservices:\n  web:\n    image: {name: x}\n    "+tt.network+"\n"))
		if err != nil {
			t.Fatalf("%q: %v", tt.network, err)
		}
		if got := fmt.Sprint(OverlayGroups("app", "web", d.Services["web"].Spec)); got != tt.want {
			t.Errorf("%q: groups %s, want %s", tt.network, got, tt.want)
		}
	}
}

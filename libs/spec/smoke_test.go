package spec

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func TestSmoke(t *testing.T) {
	files, _ := filepath.Glob(os.Getenv("SMOKE"))
	for _, f := range files {
		d, err := Load(f)
		fmt.Println("==", f)
		if err != nil {
			fmt.Println(err)
			continue
		}
		b, err := d.Marshal()
		fmt.Println(string(b), err)
	}
}

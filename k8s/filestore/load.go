package filestore

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/bireme/bireme/k8s"
	"github.com/bireme/bireme/policy"
)

// LoadDir reads every *.yaml, *.yml and *.json file directly in dir (not in
// subdirectories; names starting with "." are skipped, so editors' and
// atomic writers' temporary files are never half-read), in name order, as
// [LoadFiles] does.
func LoadDir(dir string) (policy.Objects, error) {
	files, err := storeFiles(dir)
	if err != nil {
		return policy.Objects{}, err
	}
	return LoadFiles(files...)
}

// LoadFiles reads and decodes files of Namespace, Pod and NetworkPolicy
// objects with a [k8s.Decoder]: strict, validated, and errors of the form
// "FILE: Kind namespace/name: field.path: problem". An object defined in two
// files is an error.
func LoadFiles(files ...string) (policy.Objects, error) {
	var d k8s.Decoder
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return policy.Objects{}, fmt.Errorf("read policy file: %w", err)
		}
		if err := d.Decode(f, data); err != nil {
			return policy.Objects{}, err
		}
	}
	return d.Objects(), nil
}

// LoadPaths loads files and directories together: a directory contributes
// the files [LoadDir] would read. Duplicates across all of them are errors.
func LoadPaths(paths ...string) (policy.Objects, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return policy.Objects{}, fmt.Errorf("read policy input: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		fs, err := storeFiles(p)
		if err != nil {
			return policy.Objects{}, err
		}
		files = append(files, fs...)
	}
	return LoadFiles(files...)
}

// storeFiles lists the files LoadDir reads, sorted.
func storeFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read policy store: %w", err)
	}
	var files []string
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") {
			continue
		}
		switch strings.ToLower(filepath.Ext(name)) {
		case ".yaml", ".yml", ".json":
			files = append(files, filepath.Join(dir, name))
		}
	}
	sort.Strings(files)
	return files, nil
}

// runc-caps: a pass-through in front of runc for sandboxes whose capability bounding set is smaller than
// the full set (CI and development VMs here lack CAP_SYS_RESOURCE). Privileged containers ask for every
// capability the runtime knows, and runc refuses to start them with "unable to apply caps: operation not
// permitted" when one of them is not in the bounding set. Before handing over to the real runc, this
// program drops from the OCI spec every capability that the current bounding set does not hold:
//
//   - create / run: the bundle's config.json (process.capabilities);
//   - exec:         the --process JSON file (capabilities).
//
// It changes nothing else, and nothing at all on a machine whose bounding set is full. CI bootstrap code,
// not part of what users run: .ci/docker-engine.sh registers it as dockerd's default runtime, and the kind
// tests mount it into the kind node as containerd's runc (see .ci/kind-sandbox.yaml).
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// capNames[i] is the name of capability number i (linux/capability.h, up to CAP_CHECKPOINT_RESTORE).
var capNames = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
	"CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
	"CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
	"CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
	"CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
	"CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
	"CAP_CHECKPOINT_RESTORE",
}

// Global runc flags that take a separate value (runc --help).
var valueFlags = map[string]bool{"--root": true, "--log": true, "--log-format": true, "--criu": true, "--rootless": true}

func main() {
	real := os.Getenv("RUNC_CAPS_REAL")
	if real == "" {
		real = "/usr/sbin/runc"
	}
	args := os.Args[1:]
	if err := adapt(args); err != nil {
		fmt.Fprintf(os.Stderr, "runc-caps: %v\n", err)
		os.Exit(1)
	}
	if err := syscall.Exec(real, append([]string{real}, args...), os.Environ()); err != nil {
		fmt.Fprintf(os.Stderr, "runc-caps: exec %s: %v\n", real, err)
		os.Exit(1)
	}
}

// adapt rewrites the spec file the subcommand reads, when there is one.
func adapt(args []string) error {
	cmd, rest := subcommand(args)
	missing, err := absentCaps()
	if err != nil || len(missing) == 0 {
		return err
	}
	switch cmd {
	case "create", "run":
		bundle := flagValue(rest, "--bundle", "-b")
		if bundle == "" {
			bundle = "."
		}
		return filterFile(filepath.Join(bundle, "config.json"), missing, "process", "capabilities")
	case "exec":
		if process := flagValue(rest, "--process", "-p"); process != "" {
			return filterFile(process, missing, "capabilities")
		}
	}
	return nil
}

func subcommand(args []string) (string, []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			return a, args[i+1:]
		}
		if valueFlags[a] {
			i++
		}
	}
	return "", nil
}

func flagValue(args []string, long, short string) string {
	for i, a := range args {
		if a == "--" {
			break
		}
		if (a == long || a == short) && i+1 < len(args) {
			return args[i+1]
		}
		for _, name := range []string{long, short} {
			if v, ok := strings.CutPrefix(a, name+"="); ok {
				return v
			}
		}
	}
	return ""
}

// absentCaps returns the names of known capabilities that this process's bounding set lacks.
func absentCaps() (map[string]bool, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	for scanner.Scan() {
		if v, ok := strings.CutPrefix(scanner.Text(), "CapBnd:"); ok {
			mask, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return nil, fmt.Errorf("CapBnd %q: %w", v, err)
			}
			missing := map[string]bool{}
			for i, name := range capNames {
				if mask&(1<<uint(i)) == 0 {
					missing[name] = true
				}
			}
			return missing, nil
		}
	}
	return nil, fmt.Errorf("no CapBnd line in /proc/self/status")
}

// filterFile drops the missing capabilities from every set of the object at path (e.g. process.capabilities).
func filterFile(file string, missing map[string]bool, path ...string) error {
	raw, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	node := doc
	for _, key := range path {
		next, ok := node[key].(map[string]any)
		if !ok {
			return nil
		}
		node = next
	}
	changed := false
	for set, value := range node {
		list, ok := value.([]any)
		if !ok {
			continue
		}
		kept := make([]any, 0, len(list))
		for _, c := range list {
			if name, ok := c.(string); ok && missing[name] {
				changed = true
				continue
			}
			kept = append(kept, c)
		}
		node[set] = kept
	}
	if !changed {
		return nil
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	info, err := os.Stat(file)
	if err != nil {
		return err
	}
	return os.WriteFile(file, out, info.Mode().Perm())
}

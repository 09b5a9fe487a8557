// Command chart-render renders a Helm chart the way `helm template` does, for machines that have
// no helm binary (it cannot be installed offline here; Debian ships no helm package). It uses the
// engine Helm uses, Go's text/template with Sprig v3 (Debian's golang-github-masterminds-sprig-dev,
// the Sprig release Helm 3 pins), plus Helm's own template functions, value merging, document
// splitting, kind ordering and "# Source:" output, so that `helm template` gives the same objects.
//
// Scope, deliberately: one chart without subcharts, no hooks, no toToml, `lookup` finds nothing
// (as in `helm template`), .Files offers Get and GetBytes only. A chart needing more fails loudly
// instead of rendering something helm would not.
//
//	chart-render [flags] RELEASE CHART_DIR
//	  -n, --namespace NS      .Release.Namespace (default "default")
//	  -f, --values FILE       values file, merged over values.yaml (repeatable; later wins)
//	  --set K=V[,K=V]         value override, typed like helm (repeatable)
//	  --set-string K=V        value override kept as a string (repeatable)
//	  --kube-version V        .Capabilities.KubeVersion (default v1.30.0)
//	  --show-values           print the merged values as JSON instead of rendering
//	  --notes                 print the rendered NOTES.txt instead of the manifests
//
// Built offline in GOPATH mode against /usr/share/gocode by tools/chart-render/build.sh.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"

	"github.com/Masterminds/semver/v3"
	sprig "github.com/Masterminds/sprig/v3"
	"gopkg.in/yaml.v2"
)

type values = map[string]interface{}

// ---- YAML and JSON, converted the way sigs.k8s.io/yaml (Helm's YAML library) converts them ----

// yamlToJSONValue parses YAML into JSON-typed data (map[string]interface{}, float64 numbers), as
// Helm's values loading does (YAML -> JSON -> encoding/json). That is why {{ .Values.n }} prints
// a large number as 1e+06 in Helm too.
func yamlToJSONValue(data []byte) (interface{}, error) {
	var raw interface{}
	if err := yaml.Unmarshal(data, &raw); err != nil {
		return nil, err
	}
	converted, err := jsonCompatible(raw)
	if err != nil {
		return nil, err
	}
	j, err := json.Marshal(converted)
	if err != nil {
		return nil, err
	}
	var out interface{}
	if err := json.Unmarshal(j, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// jsonCompatible turns yaml.v2's map[interface{}]interface{} into map[string]interface{}.
func jsonCompatible(v interface{}) (interface{}, error) {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, val := range t {
			c, err := jsonCompatible(val)
			if err != nil {
				return nil, err
			}
			m[fmt.Sprint(k)] = c
		}
		return m, nil
	case []interface{}:
		out := make([]interface{}, len(t))
		for i, val := range t {
			c, err := jsonCompatible(val)
			if err != nil {
				return nil, err
			}
			out[i] = c
		}
		return out, nil
	default:
		return v, nil
	}
}

// toYAML is Helm's toYaml: JSON-marshal, then YAML via yaml.v2 (sorted keys, 2-space indent,
// sequences not indented under their key), without the final newline.
func toYAML(v interface{}) string {
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return ""
	}
	out, err := yaml.Marshal(obj)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(out), "\n")
}

func fromYAML(s string) map[string]interface{} {
	v, err := yamlToJSONValue([]byte(s))
	if err != nil {
		return map[string]interface{}{"Error": err.Error()}
	}
	if m, ok := v.(map[string]interface{}); ok {
		return m
	}
	return map[string]interface{}{}
}

func fromYAMLArray(s string) []interface{} {
	v, err := yamlToJSONValue([]byte(s))
	if err != nil {
		return []interface{}{err.Error()}
	}
	if a, ok := v.([]interface{}); ok {
		return a
	}
	return []interface{}{}
}

func toJSON(v interface{}) string {
	out, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(out)
}

func fromJSON(s string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(s string) []interface{} {
	var a []interface{}
	if err := json.Unmarshal([]byte(s), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

// ---- values: defaults < -f files < --set, merged like helm ----

func deepCopy(v interface{}) interface{} {
	switch t := v.(type) {
	case map[string]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, val := range t {
			m[k] = deepCopy(val)
		}
		return m
	case []interface{}:
		out := make([]interface{}, len(t))
		for i, val := range t {
			out[i] = deepCopy(val)
		}
		return out
	default:
		return v
	}
}

// mergeMaps merges user-supplied value sources (later wins; tables merge, anything else replaces).
func mergeMaps(a, b values) values {
	out := make(values, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if bm, ok := v.(map[string]interface{}); ok {
			if am, ok := out[k].(map[string]interface{}); ok {
				out[k] = mergeMaps(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// coalesce fills user values with the chart's defaults. A user null deletes the default, as in
// helm ("--set key=null" removes a key).
func coalesce(user, defaults values) {
	for k, dv := range defaults {
		uv, ok := user[k]
		if !ok {
			user[k] = deepCopy(dv)
			continue
		}
		if uv == nil {
			delete(user, k)
			continue
		}
		um, uok := uv.(map[string]interface{})
		dm, dok := dv.(map[string]interface{})
		if uok && dok {
			coalesce(um, dm)
		} else if dok && !uok {
			fmt.Fprintf(os.Stderr, "chart-render: warning: cannot overwrite table with non table for %s (%v)\n", k, dv)
		}
	}
}

// ---- --set parsing: the subset of helm's strvals that charts meet ----
// a.b=c, several separated by commas, lists as {x,y}, list items as a[0].b, "\," and "\." escapes.

func splitUnescaped(s string, sep rune, braces bool) []string {
	var parts []string
	var cur strings.Builder
	depth := 0
	escaped := false
	for _, r := range s {
		switch {
		case escaped:
			if r != sep {
				cur.WriteRune('\\')
			}
			cur.WriteRune(r)
			escaped = false
		case r == '\\':
			escaped = true
		case braces && r == '{':
			depth++
			cur.WriteRune(r)
		case braces && r == '}':
			depth--
			cur.WriteRune(r)
		case r == sep && depth == 0:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteRune(r)
		}
	}
	if escaped {
		cur.WriteRune('\\')
	}
	return append(parts, cur.String())
}

// typedValue mirrors helm's strvals typing: booleans, null, integers (not with a leading 0);
// everything else, floats included, stays a string.
func typedValue(s string, asString bool) interface{} {
	if asString {
		return s
	}
	switch {
	case strings.EqualFold(s, "true"):
		return true
	case strings.EqualFold(s, "false"):
		return false
	case strings.EqualFold(s, "null"):
		return nil
	case s == "0":
		return int64(0)
	}
	if s != "" && s[0] != '0' {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n
		}
	}
	return s
}

var indexRe = regexp.MustCompile(`^(.*)\[(\d+)\]$`)

type keySegment struct {
	name  string
	index int // -1: not a list element
}

func parseKey(key string) ([]keySegment, error) {
	var segs []keySegment
	for _, part := range splitUnescaped(key, '.', false) {
		if part == "" {
			return nil, fmt.Errorf("empty key segment in %q", key)
		}
		seg := keySegment{name: part, index: -1}
		if m := indexRe.FindStringSubmatch(part); m != nil {
			n, _ := strconv.Atoi(m[2])
			seg = keySegment{name: m[1], index: n}
		}
		segs = append(segs, seg)
	}
	return segs, nil
}

func setPath(dst values, segs []keySegment, val interface{}) {
	seg := segs[0]
	last := len(segs) == 1
	if seg.index < 0 {
		if last {
			dst[seg.name] = val
			return
		}
		child, ok := dst[seg.name].(map[string]interface{})
		if !ok {
			child = values{}
			dst[seg.name] = child
		}
		setPath(child, segs[1:], val)
		return
	}
	list, _ := dst[seg.name].([]interface{})
	for len(list) <= seg.index {
		list = append(list, nil)
	}
	if last {
		list[seg.index] = val
	} else {
		child, ok := list[seg.index].(map[string]interface{})
		if !ok {
			child = values{}
			list[seg.index] = child
		}
		setPath(child, segs[1:], val)
	}
	dst[seg.name] = list
}

func applySet(dst values, expr string, asString bool) error {
	for _, assignment := range splitUnescaped(expr, ',', true) {
		if strings.TrimSpace(assignment) == "" {
			continue
		}
		eq := strings.IndexRune(assignment, '=')
		if eq <= 0 {
			return fmt.Errorf("--set %q: expected key=value", assignment)
		}
		segs, err := parseKey(assignment[:eq])
		if err != nil {
			return fmt.Errorf("--set %q: %v", assignment, err)
		}
		raw := assignment[eq+1:]
		var val interface{}
		if !asString && strings.HasPrefix(raw, "{") && strings.HasSuffix(raw, "}") {
			items := []interface{}{}
			if inner := raw[1 : len(raw)-1]; inner != "" {
				for _, item := range splitUnescaped(inner, ',', false) {
					items = append(items, typedValue(item, false))
				}
			}
			val = items
		} else {
			val = typedValue(raw, asString)
		}
		setPath(dst, segs, val)
	}
	return nil
}

// ---- the objects templates see ----

// chartMetadata has the field names of Helm's chart.Metadata, so .Chart.AppVersion etc. resolve
// (and a misspelt field fails) exactly as in helm.
type chartMetadata struct {
	Name         string            `json:"name"`
	Home         string            `json:"home"`
	Sources      []string          `json:"sources"`
	Version      string            `json:"version"`
	Description  string            `json:"description"`
	Keywords     []string          `json:"keywords"`
	Maintainers  []*maintainer     `json:"maintainers"`
	Icon         string            `json:"icon"`
	APIVersion   string            `json:"apiVersion"`
	Condition    string            `json:"condition"`
	Tags         string            `json:"tags"`
	AppVersion   string            `json:"appVersion"`
	Deprecated   bool              `json:"deprecated"`
	Annotations  map[string]string `json:"annotations"`
	KubeVersion  string            `json:"kubeVersion"`
	Dependencies []interface{}     `json:"dependencies"`
	Type         string            `json:"type"`
}

type maintainer struct {
	Name  string `json:"name"`
	Email string `json:"email"`
	URL   string `json:"url"`
}

type kubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

func (k kubeVersion) String() string { return k.Version }

type versionSet []string

func (v versionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

type capabilities struct {
	KubeVersion kubeVersion
	APIVersions versionSet
}

// files is .Files: the chart's files outside templates/.
type files map[string][]byte

func (f files) GetBytes(name string) []byte { return f[name] }
func (f files) Get(name string) string     { return string(f[name]) }

// builtinAPIVersions: the GA API groups of the Kubernetes versions this renderer stands in for.
var builtinAPIVersions = versionSet{
	"v1", "apps/v1", "batch/v1", "autoscaling/v1", "autoscaling/v2", "policy/v1",
	"rbac.authorization.k8s.io/v1", "networking.k8s.io/v1", "discovery.k8s.io/v1",
	"storage.k8s.io/v1", "scheduling.k8s.io/v1", "coordination.k8s.io/v1",
	"apiextensions.k8s.io/v1", "admissionregistration.k8s.io/v1", "node.k8s.io/v1",
}

// ---- rendering ----

const warnStart, warnEnd = "HELM_ERR_START", "HELM_ERR_END"

var warnRe = regexp.MustCompile(warnStart + `(.*)` + warnEnd)

func funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	// Helm removes these: a chart must not depend on the environment of whoever renders it.
	delete(f, "env")
	delete(f, "expandenv")
	f["toYaml"] = toYAML
	f["fromYaml"] = fromYAML
	f["fromYamlArray"] = fromYAMLArray
	f["toJson"] = toJSON
	f["fromJson"] = fromJSON
	f["fromJsonArray"] = fromJSONArray
	f["required"] = func(warn string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, errors.New(warnStart + warn + warnEnd)
		}
		if s, ok := val.(string); ok && s == "" {
			return val, errors.New(warnStart + warn + warnEnd)
		}
		return val, nil
	}
	// `helm template` has no cluster: lookup finds nothing.
	f["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	// Bound to the template set below; declared here so templates using them parse.
	f["include"] = func(string, interface{}) (string, error) { return "", nil }
	f["tpl"] = func(string, interface{}) (string, error) { return "", nil }
	return f
}

func bindTemplateFuncs(t *template.Template) {
	depth := map[string]int{}
	t.Funcs(template.FuncMap{
		"include": func(name string, data interface{}) (string, error) {
			if depth[name] > 1000 {
				return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
			}
			depth[name]++
			defer func() { depth[name]-- }()
			var buf strings.Builder
			err := t.ExecuteTemplate(&buf, name, data)
			return buf.String(), err
		},
		"tpl": func(text string, data interface{}) (string, error) {
			c, err := t.Clone()
			if err != nil {
				return "", err
			}
			name := "tpl"
			if m, ok := data.(map[string]interface{}); ok {
				if tm, ok := m["Template"].(map[string]interface{}); ok {
					if n, ok := tm["Name"].(string); ok {
						name = n
					}
				}
			}
			c, err = c.New(name).Parse(text)
			if err != nil {
				return "", fmt.Errorf("error during tpl function execution for %q: %v", text, err)
			}
			var buf strings.Builder
			if err := c.ExecuteTemplate(&buf, name, data); err != nil {
				return "", fmt.Errorf("error during tpl function execution for %q: %v", text, err)
			}
			return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
		},
	})
}

// cleanExecError shortens text/template's error to helm's "execution error at (file:line:col): msg".
func cleanExecError(name string, err error) error {
	var execErr template.ExecError
	if !errors.As(err, &execErr) {
		return fmt.Errorf("render %s: %v", name, err)
	}
	tokens := strings.SplitN(err.Error(), ": ", 3)
	if len(tokens) != 3 {
		return fmt.Errorf("execution error in (%s): %v", name, err)
	}
	if m := warnRe.FindStringSubmatch(tokens[2]); m != nil {
		return fmt.Errorf("execution error at (%s): %s", tokens[1], m[1])
	}
	if i := strings.LastIndex(tokens[2], "error calling fail: "); i >= 0 {
		return fmt.Errorf("execution error at (%s): %s", tokens[1], tokens[2][i+len("error calling fail: "):])
	}
	return fmt.Errorf("execution error at (%s): %s", tokens[1], tokens[2])
}

type manifest struct {
	name    string
	content string
	kind    string
}

// installOrder is Helm 3's releaseutil.InstallOrder: `helm template` prints manifests in it.
var installOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
	"PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
	"PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
	"ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
	"RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
	"ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
	"IngressClass", "Ingress", "APIService",
}

var docSep = regexp.MustCompile(`(?:^|\s*\n)---\s*`)

func splitManifests(name, text string) ([]manifest, error) {
	var out []manifest
	for _, doc := range docSep.Split(strings.TrimSpace(text), -1) {
		doc = strings.TrimSpace(doc)
		if doc == "" {
			continue
		}
		var head struct {
			Kind     string `yaml:"kind"`
			Metadata struct {
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			return nil, fmt.Errorf("YAML parse error on %s: %v", name, err)
		}
		if _, hook := head.Metadata.Annotations["helm.sh/hook"]; hook {
			return nil, fmt.Errorf("%s: helm hooks are not supported by this renderer", name)
		}
		out = append(out, manifest{name: name, content: doc, kind: head.Kind})
	}
	return out, nil
}

func sortByKind(ms []manifest) {
	order := make(map[string]int, len(installOrder))
	for i, k := range installOrder {
		order[k] = i
	}
	sort.SliceStable(ms, func(i, j int) bool {
		a, aok := order[ms[i].kind]
		b, bok := order[ms[j].kind]
		switch {
		case !aok && !bok:
			return ms[i].kind < ms[j].kind
		case !aok:
			return false
		case !bok:
			return true
		}
		return a < b
	})
}

// ---- command line ----

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "chart-render: "+format+"\n", args...)
	os.Exit(1)
}

func readValuesFile(file string) values {
	data, err := os.ReadFile(file)
	if err != nil {
		fail("%v", err)
	}
	v, err := yamlToJSONValue(data)
	if err != nil {
		fail("cannot parse %s: %v", file, err)
	}
	if v == nil {
		return values{}
	}
	m, ok := v.(map[string]interface{})
	if !ok {
		fail("%s: values must be a YAML mapping", file)
	}
	return m
}

func main() {
	var valueFiles, sets, setStrings multiFlag
	namespace := "default"
	kubeVer := "v1.30.0"
	var showValues, notes bool
	flags := flag.NewFlagSet("chart-render", flag.ContinueOnError)
	flags.StringVar(&namespace, "namespace", namespace, "release namespace")
	flags.StringVar(&namespace, "n", namespace, "release namespace (shorthand)")
	flags.Var(&valueFiles, "values", "values file (repeatable)")
	flags.Var(&valueFiles, "f", "values file (shorthand)")
	flags.Var(&sets, "set", "key=value override (repeatable)")
	flags.Var(&setStrings, "set-string", "key=value override kept as a string (repeatable)")
	flags.StringVar(&kubeVer, "kube-version", kubeVer, ".Capabilities.KubeVersion")
	flags.BoolVar(&showValues, "show-values", false, "print the merged values as JSON")
	flags.BoolVar(&notes, "notes", false, "print the rendered NOTES.txt")
	flags.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: chart-render [flags] RELEASE CHART_DIR")
		flags.PrintDefaults()
	}
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if flags.NArg() != 2 {
		flags.Usage()
		os.Exit(2)
	}
	release, chartDir := flags.Arg(0), flags.Arg(1)

	// Chart.yaml
	chartData, err := os.ReadFile(filepath.Join(chartDir, "Chart.yaml"))
	if err != nil {
		fail("%v", err)
	}
	chartJSON, err := yamlToJSONValue(chartData)
	if err != nil {
		fail("cannot parse Chart.yaml: %v", err)
	}
	var meta chartMetadata
	if j, err := json.Marshal(chartJSON); err != nil || json.Unmarshal(j, &meta) != nil {
		fail("Chart.yaml does not describe a chart")
	}
	if meta.APIVersion != "v2" || meta.Name == "" {
		fail("Chart.yaml: apiVersion must be v2 and name must be set")
	}
	if _, err := semver.StrictNewVersion(meta.Version); err != nil {
		fail("Chart.yaml: version %q is not strict SemVer 2", meta.Version)
	}
	if len(meta.Dependencies) > 0 {
		fail("Chart.yaml: dependencies (subcharts) are not supported by this renderer")
	}
	kv, err := semver.NewVersion(kubeVer)
	if err != nil {
		fail("--kube-version %q: %v", kubeVer, err)
	}
	if meta.KubeVersion != "" {
		c, err := semver.NewConstraint(meta.KubeVersion)
		if err != nil {
			fail("Chart.yaml: kubeVersion %q: %v", meta.KubeVersion, err)
		}
		if !c.Check(kv) {
			fail("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", meta.KubeVersion, kubeVer)
		}
	}

	// Values: user sources merged in order, then the chart's defaults underneath.
	user := values{}
	for _, f := range valueFiles {
		user = mergeMaps(user, readValuesFile(f))
	}
	for _, s := range sets {
		if err := applySet(user, s, false); err != nil {
			fail("%v", err)
		}
	}
	for _, s := range setStrings {
		if err := applySet(user, s, true); err != nil {
			fail("%v", err)
		}
	}
	defaults := values{}
	if _, err := os.Stat(filepath.Join(chartDir, "values.yaml")); err == nil {
		defaults = readValuesFile(filepath.Join(chartDir, "values.yaml"))
	}
	coalesce(user, defaults)
	vals := user
	if showValues {
		out, err := json.MarshalIndent(vals, "", "  ")
		if err != nil {
			fail("%v", err)
		}
		fmt.Println(string(out))
		return
	}

	// Templates: every file under templates/, named "<chart>/templates/<path>".
	templatesDir := filepath.Join(chartDir, "templates")
	sources := map[string]string{}
	chartFiles := files{}
	err = filepath.WalkDir(chartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(chartDir, p)
		rel = filepath.ToSlash(rel)
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasPrefix(p, templatesDir+string(filepath.Separator)) {
			sources[path.Join(meta.Name, rel)] = string(data)
		} else if rel != "Chart.yaml" && rel != "values.yaml" && rel != "values.schema.json" {
			chartFiles[rel] = data
		}
		return nil
	})
	if err != nil {
		fail("%v", err)
	}
	names := make([]string, 0, len(sources))
	for n := range sources {
		names = append(names, n)
	}
	sort.Strings(names)

	t := template.New("gotpl").Option("missingkey=zero").Funcs(funcMap())
	bindTemplateFuncs(t)
	for _, n := range names {
		if _, err := t.New(n).Parse(sources[n]); err != nil {
			fail("parse error in (%s): %v", n, err)
		}
	}

	major, minor := strconv.FormatUint(kv.Major(), 10), strconv.FormatUint(kv.Minor(), 10)
	top := values{
		"Values": vals,
		"Release": values{
			"Name": release, "Namespace": namespace, "Service": "Helm",
			"IsInstall": true, "IsUpgrade": false, "Revision": 1,
		},
		"Chart": &meta,
		"Capabilities": &capabilities{
			KubeVersion: kubeVersion{Version: "v" + kv.String(), Major: major, Minor: minor, GitVersion: "v" + kv.String()},
			APIVersions: builtinAPIVersions,
		},
		"Files": chartFiles,
	}

	var manifests []manifest
	notesText := ""
	for _, n := range names {
		if strings.HasPrefix(path.Base(n), "_") {
			continue // partials are only included
		}
		top["Template"] = values{"Name": n, "BasePath": path.Join(meta.Name, "templates")}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, n, top); err != nil {
			fail("%v", cleanExecError(n, err))
		}
		out := strings.ReplaceAll(buf.String(), "<no value>", "")
		if strings.HasSuffix(n, "NOTES.txt") {
			notesText = out
			continue
		}
		if strings.TrimSpace(out) == "" {
			continue
		}
		ms, err := splitManifests(n, out)
		if err != nil {
			fail("%v", err)
		}
		manifests = append(manifests, ms...)
	}
	if notes {
		fmt.Print(notesText)
		return
	}
	sortByKind(manifests)
	var b strings.Builder
	for _, m := range manifests {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", m.name, m.content)
	}
	os.Stdout.WriteString(b.String())
}

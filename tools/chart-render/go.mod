// Built in GOPATH mode against Debian's Go packages (see build.sh); this file is what lets the
// GOPATH build resolve the /v3 import paths ("minimal module compatibility"). With network access
// the same versions build in module mode too.
module natlens-chart-render

go 1.19

require (
	github.com/Masterminds/semver/v3 v3.2.0
	github.com/Masterminds/sprig/v3 v3.2.3
	gopkg.in/yaml.v2 v2.4.0
)

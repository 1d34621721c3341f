// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3
// (that module has no main package of its own since v3.6).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }

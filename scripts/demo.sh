#!/usr/bin/env bash
# The main job: build the busybox image, run containers, show them isolated and limited, clean up.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
vk() { echo "+ virtkit $*" >&2; virtkit "$@"; }

vk image build busybox
vk image list
echo "== isolation: PID 1, own hostname, root inside =="
vk run --rm --name demo-hello busybox -- sh -c 'echo "pid: $$"; echo "hostname: $(hostname)"; id; echo "processes:"; ps; echo "network:"; ip -o link'
echo "== limits: a web server with 0.5 CPU, 64M memory, 64 pids =="
virtkit rm -f demo-web >/dev/null 2>&1 || true
vk run -d --name demo-web --cpus 0.5 --memory 64M --pids 64 busybox -- \
    sh -c 'echo "hello from demo-web" > /var/www/index.html; exec httpd -f -p 8080 -h /var/www'
vk list
vk exec demo-web -- sh -c 'wget -qO- http://127.0.0.1:8080/ >/dev/null 2>&1; echo "exec sees: $(hostname), pid of httpd: $(pidof httpd)"'
vk stats demo-web
echo "== networks: another instance reaches the server by name on the default network =="
vk run --rm busybox -- wget -qO- http://demo-web:8080/
echo "== a virtual machine: its own kernel (QEMU; TCG where /dev/kvm is PVM) =="
vk run --vm --rm busybox -- sh -c 'echo "guest kernel: $(uname -r)"'
echo "== a process over its memory limit is OOM-killed =="
virtkit rm -f demo-oom >/dev/null 2>&1 || true
vk run --name demo-oom --memory 16M busybox -- sh -c 'x=a; while true; do x=$x$x; done' || echo "exit code: $?"
vk list
vk stop -t 2 demo-web
vk rm demo-web demo-oom
vk list
vk system shutdown

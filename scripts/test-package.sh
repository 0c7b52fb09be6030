#!/usr/bin/env bash
# The install test under real systemd: builds the Debian package with `cargo deb`, boots a
# Debian 12 root file system (debootstrap, cached under /var/cache/dingdong-test) with
# `systemd-nspawn -b --volatile=overlay` (every run starts from the clean cache), and inside it
# runs the README's install steps literally (the fenced blocks after `<!-- install-test: ... -->`;
# the built-in APNs simulator stands in for Apple, the container's mosquitto is the broker),
# then checks the service, its data, the journal, reload, upgrade, remove and purge. One line per
# check, `ok` or `FAIL`, with its figure. Exit 0 all ok, 1 a check failed, 2 could not run,
# 77 skipped (not root, no nspawn): the reason is printed.
#
# Drives the container without machined (--register=no): commands run in its namespaces with
# nsenter, long-running helpers as transient units of the container's own systemd.
set -euo pipefail
cd "$(dirname "$0")/.."
t_start=$(date +%s)

skip() { echo "test-package: SKIP: $*"; exit 77; }
die() { echo "test-package: cannot run: $*" >&2; exit 2; }

# --- what the machine must allow -------------------------------------------------------------
[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, systemd-nspawn)"
[ "$(uname -s)" = Linux ] || skip "needs Linux"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v nsenter >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || skip "needs ${missing[*]} and has no apt-get to install them"
  echo "test-package: installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || skip "could not install ${missing[*]} with apt-get"
fi
if ! cargo deb --version >/dev/null 2>&1; then
  echo "test-package: installing cargo-deb"
  cargo install --locked --quiet cargo-deb || die "cargo install cargo-deb failed"
fi

# --- the cached root file system -------------------------------------------------------------
# Rebuilt when this stamp changes (suite, variant, packages, or the number at its start).
suite=bookworm
mirror=${DINGDONG_TEST_MIRROR:-http://deb.debian.org/debian}
cache=${DINGDONG_TEST_CACHE:-/var/cache/dingdong-test}
packages=systemd,systemd-sysv,dbus,mosquitto,mosquitto-clients,ca-certificates,curl,procps
stamp="1 $suite minbase $packages"
root="$cache/$suite-$(printf '%s' "$stamp" | sha256sum | cut -c1-12)"
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9 # one run at a time uses (and may rebuild) the cache
if [ ! -e "$root/.dingdong-test-stamp" ]; then
  echo "test-package: making the $suite root file system in $root (debootstrap, about a minute)"
  rm -rf "$cache/$suite-"*
  debootstrap --variant=minbase --include="$packages" "$suite" "$root.tmp" "$mirror" \
    >"$cache/debootstrap.log" 2>&1 \
    || skip "debootstrap from $mirror failed (no network?): $(tail -1 "$cache/debootstrap.log")"
  printf '%s\n' "$stamp" >"$root.tmp/.dingdong-test-stamp"
  mv "$root.tmp" "$root"
fi

# --- the packages: the build under test, and the same as a newer version for the upgrade --------
work=$(mktemp -d /tmp/dingdong-pkgtest.XXXXXX)
share="$work/share"
mkdir -p "$share/v1" "$share/v2"
t_build=$(date +%s)
# --fast: lighter compression of the same files (a minute less on 2 cores).
nice -n 10 cargo deb --locked --fast --output "$share/v1/" >"$work/build.log" 2>&1 \
  || { tail -20 "$work/build.log" >&2; die "cargo deb failed"; }
deb1=$(ls "$share"/v1/dingdong_*.deb)
v1=$(dpkg-deb -f "$deb1" Version)
v2="$v1+upgrade"
cargo deb --locked --fast --no-build --deb-version "$v2" --output "$share/v2/" >>"$work/build.log" 2>&1 \
  || die "cargo deb --deb-version failed"
deb2=$(ls "$share"/v2/dingdong_*.deb)
t_build=$(($(date +%s) - t_build))
bin_size=$(dpkg-deb --fsys-tarfile "$deb1" | tar -tvf - ./usr/bin/dingdong | awk '{print $3}')

# The README's blocks, as the container runs them.
readme_block() {
  awk -v m="<!-- install-test: $1 -->" '
    $0 == m { f = 1; next }
    f == 1 && /^```/ { f = 2; next }
    f == 2 && /^```/ { exit }
    f == 2 { print }' README.md
}
for b in package simulator configure; do
  readme_block "$b" >"$share/readme-$b.sh"
  [ -s "$share/readme-$b.sh" ] || die "README.md has no block after <!-- install-test: $b -->"
done
# `editor` in the configure block: stands in for the person editing the config, with what the
# simulator recipe says (its endpoint, CA, key id and team id; the key the block installed).
cat >"$share/editor" <<'EOF'
#!/bin/sh
set -e
ids=/etc/dingdong/apns-sim/key-ids.json
kid=$(sed -n 's/.*"key_id":"\([^"]*\)".*/\1/p' "$ids")
tid=$(sed -n 's/.*"team_id":"\([^"]*\)".*/\1/p' "$ids")
sed -i -e "s|^key_file = .*|key_file = \"/etc/dingdong/AuthKey_$kid.p8\"|" \
  -e "s|^key_id = .*|key_id = \"$kid\"|" -e "s|^team_id = .*|team_id = \"$tid\"|" \
  -e '0,/^# endpoint = .*/s||endpoint = "https://127.0.0.1:8443"|' \
  -e '0,/^# ca_file = "\/path\/ca.pem"/s||ca_file = "/etc/dingdong/apns-sim/ca.pem"|' "$1"
EOF
chmod 0755 "$share/editor"

# --- boot ----------------------------------------------------------------------------------------
nspawn_pid=
cleanup() {
  if [ -n "${DINGDONG_TEST_KEEP:-}" ] && [ -n "${leader:-}" ]; then
    c journalctl -o short-precise >"$work/journal.txt" 2>&1 || true
  fi
  if [ -n "$nspawn_pid" ] && kill -0 "$nspawn_pid" 2>/dev/null; then
    kill -TERM "$nspawn_pid" 2>/dev/null || true # nspawn asks the container's systemd to power off
    for _ in $(seq 100); do kill -0 "$nspawn_pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$nspawn_pid" 2>/dev/null || true
  fi
  if [ -z "${DINGDONG_TEST_KEEP:-}" ]; then rm -rf "$work"; else echo "test-package: kept $work"; fi
}
trap cleanup EXIT
t_boot=$(date +%s%N)
systemd-nspawn -q -D "$root" -b --keep-unit --register=no --private-network --volatile=overlay \
  --bind-ro="$share:/srv/dingdong-test" </dev/null >"$work/console.log" 2>&1 &
nspawn_pid=$!
leader=
for _ in $(seq 150); do
  kill -0 "$nspawn_pid" 2>/dev/null \
    || skip "systemd-nspawn cannot boot a container here: $(grep -v '^$' "$work/console.log" | tail -2 | tr '\n' ' ')"
  leader=$(pgrep -P "$nspawn_pid" | head -1 || true)
  [ -n "$leader" ] && [ "$(cat "/proc/$leader/comm" 2>/dev/null)" = systemd ] && break
  leader=
  sleep 0.2
done
[ -n "$leader" ] || die "no systemd in the container after 30 s"

# c CMD...: runs CMD in the container, as root, with a clean environment.
c() {
  nsenter -t "$leader" -a env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
}
# cs SCRIPT: a shell script in the container, in the install folder.
cs() { c sh -ec "cd /srv/install 2>/dev/null || cd /; $1"; }

# systemctl answers once the container's systemd listens on its private socket: ask until it does.
state=
for _ in $(seq 300); do
  state=$(c timeout 60 systemctl is-system-running --wait 2>/dev/null || true)
  [ -n "$state" ] && break
  sleep 0.2
done
case "$state" in
  running | degraded) ;;
  *) die "the container did not boot (state '$state'), see console: $(tail -5 "$work/console.log")" ;;
esac
t_boot=$((($(date +%s%N) - t_boot) / 1000000))

# --- checks ----------------------------------------------------------------------------------
# From here on a failing command is a finding, not the end of the run: each check says what it saw.
set +e
checks=0
fails=0
report() { # LEVEL NAME FIGURE
  printf '%-4s  %-18s %s\n' "$1" "$2" "$3"
  checks=$((checks + 1))
  [ "$1" = ok ] || fails=$((fails + 1))
}
prop() { c systemctl show dingdong -P "$1"; }
sim_accepted() {
  c curl -s --max-time 5 --cacert /etc/dingdong/apns-sim/ca.pem https://127.0.0.1:8443/sim/stats \
    | sed -n 's/.*"accepted":\([0-9]*\).*/\1/p'
}
# wait_accepted N SECONDS: until the simulator accepted N pushes; prints the count it saw.
wait_accepted() {
  local n=0 end=$(($(date +%s%N) + $2 * 1000000000))
  while :; do
    n=$(sim_accepted || echo 0)
    [ "${n:-0}" -ge "$1" ] && break
    [ "$(date +%s%N)" -ge "$end" ] && break
    sleep 0.1
  done
  echo "${n:-0}"
}
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
active() { [ "$(prop ActiveState)/$(prop SubState)" = active/running ]; }
token1=5a1b2c3d00000000000000000000000000000000000000000000000000000001
token2=6b2c3d4e00000000000000000000000000000000000000000000000000000002

echo "test-package: $(basename "$deb1") (binary $((bin_size / 1000)) kB), built in ${t_build}s; container up in ${t_boot} ms"
cs "mkdir -p /srv/install && cp /srv/dingdong-test/v1/$(basename "$deb1") /srv/install/
    install -m 0755 /srv/dingdong-test/editor /usr/local/bin/editor
    echo 'APT::Get::Assume-Yes \"true\";' >/etc/apt/apt.conf.d/90dingdong-test"

# 1. The README's steps, literally: install the package, the simulator recipe, configure and start.
readme_ok=1
for b in package simulator configure; do
  if ! cs "sh -ex /srv/dingdong-test/readme-$b.sh" >"$work/readme-$b.log" 2>&1; then
    readme_ok=0
    report FAIL "readme: $b" "a step failed: $(grep '^+' "$work/readme-$b.log" | tail -1) -- $(tail -3 "$work/readme-$b.log" | tr '\n' ' ')"
    break
  fi
done
if [ $readme_ok = 1 ]; then
  report ok "readme steps" "package, simulator, configure blocks ran as written: $(grep -m1 'Active:' "$work/readme-configure.log" | sed 's/^ *//')"
fi

# 2. The unit reached active (running) as Type=notify: systemd saw READY=1.
if active && [ "$(prop Type)" = notify ]; then
  up=$((($(prop ActiveEnterTimestampMonotonic) - $(prop ExecMainStartTimestampMonotonic)) / 1000))
  report ok "unit active" "active (running), Type=notify, READY=1 ${up} ms after exec, MainPID $(prop MainPID), user $(c ps -o user= -p "$(prop MainPID)")"
else
  report FAIL "unit active" "$(prop ActiveState) ($(prop SubState)), Type=$(prop Type), result $(prop Result): $(c journalctl -u dingdong -n 3 -o cat | tr '\n' ' ')"
fi

# 3. A press rings: the household added beside the running service, a press, the push at the simulator.
cs "dingdong user add alice && dingdong doorbell add front --name 'Front door' --owner alice \
    && dingdong phone add alice $token1" >"$work/household.log" 2>&1 || true
t=$(date +%s%N)
ring_out=$(cs "dingdong ring front" 2>&1 || true)
got=$(wait_accepted 1 10)
received=$(c curl -s --cacert /etc/dingdong/apns-sim/ca.pem https://127.0.0.1:8443/sim/received || true)
if [ "$got" -ge 1 ] && grep -q "${token1:0:8}" <<<"$received"; then
  report ok "press rings" "$ring_out; the simulator accepted $got push for ${token1:0:8} within $(ms_since "$t") ms"
else
  report FAIL "press rings" "$ring_out; simulator accepted ${got:-0} ($(tr '\n' ' ' <"$work/household.log"))"
fi

# 4. Root commands beside the service, then restarts: the service still opens its database.
#    Once while it runs, once while it is stopped (root then creates SQLite's -wal and -shm).
c systemctl restart dingdong || true
restart1=$(active && echo active || echo "$(prop ActiveState)")
c systemctl stop dingdong
cs "dingdong phone add alice $token2" >>"$work/household.log" 2>&1 || true
c systemctl start dingdong || true
restart2=$(active && echo active || echo "$(prop ActiveState)")
owners=$(cs 'stat -c "%n %U:%G %a" /var/lib/dingdong/*' | sed 's|/var/lib/dingdong/||' | tr '\n' ',' | sed 's/,$//')
foreign=$(cs 'find /var/lib/dingdong ! -user dingdong' | wc -l)
phones=$(cs "dingdong phone list --json" | grep -c '"token"' || true)
diag_out=$(cs "dingdong diag" 2>&1)
diag_rc=$?
diag_files=$(grep -E '^\S+ +files ' <<<"$diag_out")
diag_sum=$(grep -E '^[0-9]+ checks:' <<<"$diag_out")
if [ "$restart1" = active ] && [ "$restart2" = active ] && [ "$foreign" = 0 ] && [ "$phones" = 2 ] \
  && [ "$diag_rc" = 0 ] && [[ $diag_files == ok* ]]; then
  report ok "root CLI + restart" "restart after phone add beside it: active; phone add while stopped, start: active; $owners; diag exit 0 ($diag_sum), $(sed 's/^ok *files *//' <<<"$diag_files")"
else
  report FAIL "root CLI + restart" "restart: $restart1, start after a stopped add: $restart2, phones $phones, files $owners; diag exit $diag_rc: $(grep -E '^FAIL' <<<"$diag_out" | tr '\n' ' ') $diag_files; $(c journalctl -u dingdong -p warning -n 2 -o cat | tr '\n' ' ')"
fi

# 4b. diag, run as root, judges the key as the service's user sees it.
key=$(cs 'ls /etc/dingdong/AuthKey_*.p8' | head -1)
cs "chmod 0600 $key"
diag_out=$(cs "dingdong diag" 2>&1)
diag_rc=$?
cs "chmod 0640 $key"
line=$(grep -E '^FAIL +files ' <<<"$diag_out" | head -1)
if [ "$diag_rc" = 1 ] && grep -q "user dingdong cannot read $key" <<<"$line" && grep -q "fix: chgrp dingdong" <<<"$line"; then
  report ok "diag as service" "key made root:dingdong 0600 -> exit 1: $(sed 's/^FAIL *files *//' <<<"$line")"
else
  report FAIL "diag as service" "key made 0600: diag exit $diag_rc, files line: ${line:-$(grep -E ' files ' <<<"$diag_out")}"
fi

# 5. The journal: a warning (a press of an unknown button) at priority 4, info lines not among
#    -p warning, no colour codes, MESSAGE a string, no timestamp of our own.
c mosquitto_pub -h 127.0.0.1 -q 1 -t dingdong/gw-0001/button/nosuchbell/press -n
warned=0
for _ in $(seq 50); do
  warned=$(c journalctl -u dingdong -p warning..warning -o cat | grep -c nosuchbell)
  [ "$warned" -ge 1 ] && break
  sleep 0.1
done
warn_lines=$(c journalctl -u dingdong -p warning -o cat | grep -c . || true)
info_in_warn=$(c journalctl -u dingdong -p warning -o cat | grep -c 'dingdong ready' || true)
info_lines=$(c journalctl -u dingdong -p info..info -o cat | grep -c 'dingdong ready' || true)
all_lines=$(c journalctl -u dingdong -o cat | grep -c . || true)
escapes=$(c journalctl -u dingdong -o cat | grep -c $'\e' || true)
byte_msgs=$(c journalctl -u dingdong -o json | grep -c '"MESSAGE":\[' || true)
stamped=$(c journalctl -u dingdong -o cat | grep -cE '^[0-9]{4}-[0-9]{2}-[0-9]{2}T' || true)
sample=$(c journalctl -u dingdong -p warning..warning -o cat | grep -m1 nosuchbell || true)
if [ "$warned" -ge 1 ] && [ "$info_in_warn" = 0 ] && [ "$info_lines" -ge 1 ] && [ "$escapes" = 0 ] \
  && [ "$byte_msgs" = 0 ] && [ "$stamped" = 0 ]; then
  report ok "journal" "-p warning: $warn_lines lines, the unknown button at priority 4 (\"$sample\"), 0 of the $info_lines 'ready' info lines; $all_lines lines: 0 escape codes, 0 byte-array MESSAGEs, 0 own timestamps"
else
  report FAIL "journal" "unknown-button warning at priority 4: $warned, info lines under -p warning: $info_in_warn (at info: $info_lines), escape codes: $escapes, byte-array MESSAGEs: $byte_msgs, timestamped lines: $stamped of $all_lines"
fi

# 6. systemctl reload applies a changed config: ring.debounce 3s -> 200ms; two presses 1 s apart
#    then make two rings (two pushes to each of the 2 phones), same process.
pid0=$(prop MainPID)
n0=$(sim_accepted || echo 0)
cs "sed -i 's/^debounce = .*/debounce = \"200ms\"/' /etc/dingdong/config.toml"
since=$(date +%s)
reload_rc=0
c systemctl reload dingdong || reload_rc=$?
# The reload is asynchronous (ExecReload= sends SIGHUP): wait for the daemon's word on it.
for _ in $(seq 30); do
  c journalctl "_PID=$pid0" --since="@$since" -o cat | grep -qi reload && break
  active || break
  sleep 0.1
done
if active; then
  cs "dingdong ring front >/dev/null; sleep 1; dingdong ring front >/dev/null" || true
  got=$(wait_accepted $((n0 + 4)) 6)
else
  got=$n0
fi
pid1=$(prop MainPID)
if [ "$reload_rc" = 0 ] && active && [ "$pid1" = "$pid0" ] && [ "$got" -ge $((n0 + 4)) ]; then
  report ok "reload" "systemctl reload: same MainPID $pid0, debounce 200ms applied: two presses 1 s apart gave $((got - n0)) pushes (2 rings x 2 phones)"
elif [ "$pid1" != "$pid0" ] && [ "$(prop ActiveState)" != active ]; then
  report FAIL "reload" "SIGHUP ended the daemon (MainPID $pid0 -> $pid1, $(prop ActiveState), result $(prop Result)): it does not reload its config yet (issue 12)"
  c systemctl reset-failed dingdong 2>/dev/null || true
  c systemctl restart dingdong || true
else
  report FAIL "reload" "systemctl reload exit $reload_rc; MainPID $pid0 -> $pid1 ($(prop ActiveState), result $(prop Result)); two presses 1 s apart gave $((got - n0)) pushes, 4 expected with the new debounce: $(c journalctl -u dingdong --since="@$since" -o cat | tail -2 | tr '\n' ' ')"
  # Carry on with a running service for the checks below.
  c systemctl reset-failed dingdong 2>/dev/null || true
  c systemctl restart dingdong || true
fi

# 7. apt install of a newer version: restarted, new binary running, data kept.
pid0=$(prop MainPID)
n0=$(sim_accepted || echo 0)
cs "cp /srv/dingdong-test/v2/$(basename "$deb2") . && apt-get install -y ./$(basename "$deb2")" >"$work/upgrade.log" 2>&1 || true
pid1=$(prop MainPID)
version=$(c dpkg-query -W -f '${Version}' dingdong || true)
exe=$(c readlink "/proc/$pid1/exe" || true)
same_inode=$([ "$(c stat -L -c %i "/proc/$pid1/exe" 2>/dev/null)" = "$(c stat -c %i /usr/bin/dingdong)" ] && echo yes || echo no)
phones=$(cs "dingdong phone list --json" | grep -c '"token"' || true)
cs "dingdong ring front >/dev/null" || true
got=$(wait_accepted $((n0 + 2)) 10)
if [ "$version" = "$v2" ] && active && [ "$pid1" != "$pid0" ] && [ "$exe" = /usr/bin/dingdong ] \
  && [ "$same_inode" = yes ] && [ "$phones" = 2 ] && [ "$got" -ge $((n0 + 2)) ]; then
  report ok "upgrade" "$v1 -> $v2: restarted (MainPID $pid0 -> $pid1), running $exe (the new file), $phones phones kept, a press rang both"
else
  report FAIL "upgrade" "version $version, MainPID $pid0 -> $pid1 ($(prop ActiveState)), exe '$exe' (new inode: $same_inode), phones $phones, pushes after +$((got - n0)) of 2: $(tail -2 "$work/upgrade.log" | tr '\n' ' ')"
fi

# 8. apt remove stops the service and keeps its data; apt purge removes data, config and links.
cs "apt-get remove -y dingdong" >"$work/remove.log" 2>&1 || true
state=$(prop ActiveState || true)
procs=$(c pgrep -u dingdong | wc -l || true)
kept=$(cs 'ls /var/lib/dingdong/dingdong.db /etc/dingdong/config.toml 2>/dev/null' | wc -l)
if [ "$state" != active ] && [ "$procs" = 0 ] && [ "$kept" = 2 ]; then
  report ok "remove" "service $state, 0 processes of user dingdong, database and config kept"
else
  report FAIL "remove" "service $state, $procs processes of user dingdong, $kept of 2 (database, config) kept: $(tail -2 "$work/remove.log" | tr '\n' ' ')"
fi
cs "apt-get purge -y dingdong" >"$work/purge.log" 2>&1 || true
left_state=$(cs 'ls -d /var/lib/dingdong /var/lib/private/dingdong 2>/dev/null' | wc -l)
left_config=$(cs 'ls /etc/dingdong/config.toml* 2>/dev/null' | wc -l)
links=$(cs 'find /etc/systemd -name "dingdong*" -o -lname "*dingdong*"' | tr '\n' ' ')
unit_known=$(c systemctl list-unit-files dingdong.service --no-legend | grep -c dingdong || true)
admin_files=$(cs 'ls -A /etc/dingdong 2>/dev/null' | tr '\n' ' ')
if [ "$left_state" = 0 ] && [ "$left_config" = 0 ] && [ -z "$links" ] && [ "$unit_known" = 0 ]; then
  report ok "purge" "/var/lib/dingdong and config.toml gone, no unit file or enable link left; kept in /etc/dingdong what the admin put there: ${admin_files:-nothing}"
else
  report FAIL "purge" "state dirs left: $left_state, config files left: $left_config, links: ${links:-none}, unit known: $unit_known"
fi

echo "test-package: $((checks - fails)) of $checks checks ok, ${fails} failed; $(($(date +%s) - t_start)) s in all (package build ${t_build} s)"
[ "$fails" = 0 ]

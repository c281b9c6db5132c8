#!/usr/bin/env bash
# Make sure a headless Chromium and its WebDriver are installed, for tests/test_dashboard.py
# (which runs this from a session fixture). Prints the two paths on stdout, one per line:
# the browser, then the driver.
#
# - both found (NMC_CHROMIUM / NMC_CHROMEDRIVER, or chromium and chromedriver on the PATH):
#   nothing to install.
# - Debian/Ubuntu as root (a fresh CI or dev machine): install Debian's `chromium` and
#   `chromium-driver` (from the Debian mirror: no CDN, no browser download by Selenium).
# - anywhere else: say in one line what to install, exit 1.
set -u

apt_log=${NMC_APT_LOG:-/tmp/nmc-apt-browser.log}

find_browser() {
  if [ -n "${NMC_CHROMIUM:-}" ]; then echo "$NMC_CHROMIUM"; return; fi
  command -v chromium || command -v chromium-browser || true
}
find_driver() {
  if [ -n "${NMC_CHROMEDRIVER:-}" ]; then echo "$NMC_CHROMEDRIVER"; return; fi
  command -v chromedriver || true
}

for given in NMC_CHROMIUM NMC_CHROMEDRIVER; do
  if [ -n "${!given:-}" ] && [ ! -x "${!given}" ]; then
    echo "ensure-browser: $given=${!given} is not an executable file" >&2
    exit 1
  fi
done

browser=$(find_browser)
driver=$(find_driver)
if [ -n "$browser" ] && [ -n "$driver" ]; then
  printf '%s\n%s\n' "$browser" "$driver"
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || [ "$(uname -s)" != Linux ]; then
  echo "ensure-browser: no chromium + chromedriver found; install them (Debian/Ubuntu: 'sudo apt-get install chromium chromium-driver'; elsewhere Chromium or Chrome and the matching chromedriver, with NMC_CHROMIUM and NMC_CHROMEDRIVER set to their paths)" >&2
  exit 1
fi

echo "ensure-browser: installing Debian's chromium and chromium-driver (log: $apt_log) ..." >&2
export DEBIAN_FRONTEND=noninteractive
# Lock::Timeout: another apt-get (ensure-docker.sh, an engineer) may hold the dpkg lock for a while.
if ! { apt-get -o DPkg::Lock::Timeout=300 update -qq &&
       apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends \
         chromium chromium-driver; } >"$apt_log" 2>&1; then
  echo "ensure-browser: 'apt-get install chromium chromium-driver' failed; see $apt_log: $(tail -n 1 "$apt_log")" >&2
  exit 1
fi

browser=$(find_browser)
driver=$(find_driver)
if [ -z "$browser" ] || [ -z "$driver" ]; then
  echo "ensure-browser: chromium-driver installed, but chromium or chromedriver is still not on the PATH" >&2
  exit 1
fi
echo "ensure-browser: chromium and chromedriver are installed." >&2
printf '%s\n%s\n' "$browser" "$driver"

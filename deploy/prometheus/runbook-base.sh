#!/bin/sh
# Print rules.yml with every runbook_url pointing at BASE, the address where your copy of
# docs/operations.md is served (its "### AlertName" headings are the #alertname anchors).
#
#   deploy/prometheus/runbook-base.sh https://docs.example.com/fraudscore/operations > /etc/prometheus/rules.yml
#   promtool check rules /etc/prometheus/rules.yml
#
# Without it the links point at the repository's docs/operations.md (see rules.yml's header).
set -eu
default="https://github.com/fraudscore/fraudscore/blob/main/docs/operations.md"
if [ "$#" -lt 1 ] || [ "$#" -gt 2 ]; then
  echo "usage: $0 BASE_URL [RULES_FILE] > rules.yml   (BASE_URL like https://docs.example.com/operations)" >&2
  exit 2
fi
base="${1%/}"
case "$base" in
  http://*|https://*) ;;
  *) echo "$0: BASE_URL must start with http:// or https:// (got '$base'): a relative link is not clickable in a notification" >&2
     exit 2 ;;
esac
case "$base" in
  *'|'*|*'#'*) echo "$0: BASE_URL must not contain '|' or '#': the anchors are added after it" >&2; exit 2 ;;
esac
rules="${2:-$(dirname "$0")/rules.yml}"
sed "s|runbook_url: $default#|runbook_url: $base#|" "$rules"

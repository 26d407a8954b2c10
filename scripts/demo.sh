#!/usr/bin/env bash
# The whole job on embedded defaults: brings up Orthanc (with its DICOMweb plugin)
# loaded with a generated CT study, the example model API, and the proxy; runs one
# series segmentation through the proxy and shows the result. Stops everything on exit.
#
#   scripts/demo.sh            # ports: proxy 8002, Orthanc 18042, model 18011
#   PROXY_PORT=9002 scripts/demo.sh
#   MODEL_PROXY_BIN=path scripts/demo.sh   # another build instead of target/release
#                                          # (scripts/release-check.sh: aarch64 under qemu)
# Exits non-zero unless the model received and decoded every instance of the series.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

PROXY_PORT=${PROXY_PORT:-8002}
ORTHANC_PORT=${ORTHANC_PORT:-18042}
MODEL_PORT=${MODEL_PORT:-18011}
SERVER=b1407f18-575d-487c-bc0c-640c6da651bc
MODEL=1d9508dd-9089-40c3-abdd-15f47120d682

scripts/setup.sh
if [ -n "${MODEL_PROXY_BIN:-}" ]; then
    bin=$MODEL_PROXY_BIN
    echo "== model-proxy: $bin ($("$bin" --version))"
else
    echo "== building model-proxy (release)"
    cargo build --release --quiet
    bin=$root/target/release/model-proxy
fi

work=$(mktemp -d /tmp/model-proxy-demo.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

for port in "$PROXY_PORT" "$ORTHANC_PORT" "$MODEL_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "demo: port $port is taken; set PROXY_PORT / ORTHANC_PORT / MODEL_PORT" >&2
        exit 1
    fi
done

echo "== generating a CT study (2 series x 20 slices of 128x128)"
python3 tests/fixtures/gen_study.py --out "$work/data" --series 2 --slices 20 --size 128 --seed 7 > "$work/manifest.json"
study=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["studies"][0]["study"])' < "$work/manifest.json")
series=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["studies"][0]["series"][0]["series"])' < "$work/manifest.json")

echo "== starting Orthanc with DICOMweb on :$ORTHANC_PORT"
python3 tests/fixtures/orthanc.py run --dir "$work/orthanc" --http-port "$ORTHANC_PORT" > "$work/orthanc.log" 2>&1 &
pids+=($!)
python3 tests/fixtures/orthanc.py upload --url "http://127.0.0.1:$ORTHANC_PORT" "$work/data"

echo "== starting the example model API (pydicom) on :$MODEL_PORT"
python3 tests/fixtures/model_api.py --port "$MODEL_PORT" > "$work/model.log" 2>&1 &
pids+=($!)

mkdir -p "$work/config"
cat > "$work/config/servers.json" <<JSON
{
  "$SERVER": {
    "uri": "http://127.0.0.1:$ORTHANC_PORT/dicom-web",
    "isDefault": true,
    "statusUri": "http://127.0.0.1:$ORTHANC_PORT/dicom-web/studies",
    "authType": ""
  }
}
JSON
cat > "$work/config/models.json" <<JSON
{
  "$MODEL": {
    "uri": "http://127.0.0.1:$MODEL_PORT/segmentation",
    "task": "segmentation",
    "supports": ["/studies", "/studies/series", "/studies/series/instances"],
    "statusUri": "http://127.0.0.1:$MODEL_PORT/"
  }
}
JSON

echo "== making a self-signed TLS pair and starting model-proxy on https://localhost:$PROXY_PORT"
scripts/make-cert.sh "$work/certs" >/dev/null
"$bin" serve --listen "127.0.0.1:$PROXY_PORT" --config "$work/config" --state-dir "$work/state" \
    --tls-cert "$work/certs/zhiva.crt" --tls-key "$work/certs/zhiva.key" --status-page > "$work/proxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
    "$bin" healthcheck --url "https://localhost:$PROXY_PORT/healthz" --tls-cert "$work/certs/zhiva.crt" 2>/dev/null && break
    sleep 0.1
done
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$MODEL_PORT/" >/dev/null && break
    sleep 0.1
done

url="https://localhost:$PROXY_PORT/segmentations/$MODEL/studies/$study/series/$series"
echo "== GET $url"
curl -sS --cacert "$work/certs/trusted.crt" -o "$work/result.json" -w '== HTTP %{http_code}, %{size_download} bytes in %{time_total}s\n' "$url"
python3 - "$work/result.json" "$study" "$series" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
study, series = sys.argv[2], sys.argv[3]
if "code" in result and "message" in result:
    print(json.dumps(result, indent=2)); sys.exit(1)
instances = {k: v for k, v in result[study][series].items() if k != "metadata"}
print(f"segmentation of series {series}: {len(instances)} instances")
for sop, r in list(instances.items())[:3]:
    seg = r["segments"][0]
    print(f"  {sop}: {seg['className']} {seg['color']} polygon {seg['points']}")
print("  ...")
PY
echo "== what the model decoded (its GET /last):"
curl -sS "http://127.0.0.1:$MODEL_PORT/last" > "$work/last.json"
python3 - "$work/last.json" "$work/manifest.json" "$series" <<'PY'
import json, sys
last = json.load(open(sys.argv[1]))
manifest, series = json.load(open(sys.argv[2])), sys.argv[3]
print("  %d DICOM instances parsed with pydicom; request body chunked: %s" % (last["count"], last["chunked"]))
sent = sorted(i["sop"] for i in last["instances"] if i["series"] == series)
want = sorted(i for s in manifest["studies"][0]["series"] if s["series"] == series for i in s["instances"])
if last["count"] != len(want) or sent != want:
    print(f"demo: the model got {last['count']} instances, {len(sent)} of series {series}; "
          f"the series has {len(want)}", file=sys.stderr)
    sys.exit(1)
PY
echo "== proxy log:"
tail -n 3 "$work/proxy.log"

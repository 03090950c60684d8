"""The printed text and the RESULTS.md table of benchmarks/bench_doctor.py, from its figures."""

from __future__ import annotations

from typing import Any

PLANTED_SETS = ("hymenoptera_data", "trashnet_half", "flowers5")


def headline(f: dict[str, Any]) -> str:
    ht = f["timing"][0]
    copies = ", ".join(
        f"{d.split('_')[0]} {f[f'copies_{d}']['recall']:.2f}/{f[f'copies_{d}']['precision']:.2f}" for d in PLANTED_SETS
    )
    return (
        f"planted copies recall/precision {copies}; shipped flowers5 {f['flowers5']['counts']['leakage']} leakage; "
        f"label noise precision {f['labels_hymenoptera_data']['precision_at_n']:.2f} (hymenoptera), "
        f"{f['labels_trashnet_half']['precision_at_n']:.2f} (trashnet_half); copy check "
        f"{1000 * ht['warm_verify_s'] / ht['images']:.1f} s per 1,000 images (hymenoptera); hymenoptera warm "
        f"{ht['warm_s']:.1f} s (start-up {ht['startup_s']:.1f} s); load {max(r['load'] for r in f['timing']):.1f} "
        "at most"
    )


def copies_text(name: str, r: dict[str, Any]) -> str:
    lines = [
        f"planted copies in {name}: planted {r['planted']}, reported {r['reported']}, recall {r['recall']:.3f}, "
        f"precision {r['precision']:.3f} ({r['precision_known_false']:.3f} counting the shipped same-frame pairs "
        f"false), proposed pairs {r['proposed_pairs']}"
    ]
    for m in r["misses"]:
        v = m["verdict"]
        lines.append(
            f"  miss {m['transform']}: {m['files'][0]} / {m['files'][1]} similarity {m['similarity']} hash bits "
            f"{m['hash_bits']}; {'proposed' if m['proposed'] else 'not proposed, checked alone'}: {_verdict(v)}"
            + ("; in one reported group" if m["same_reported_group"] else "")
        )
    for o in r["not_planted"]:
        lines.append(
            f"  not planted {o['finding']}: {o['files'][0]} / {o['files'][1]} similarity {o['similarity']} "
            f"{o['verdict']} inliers {o['inliers']} agreement {o['agreement']} {o['classes']}: "
            + (o["true"] or "unjudged (false)")
        )
    lines += [f"  sheet: {p}" for p in r["sheets"]]
    return "\n".join(lines)


def _verdict(v: dict[str, Any]) -> str:
    more = f" scale {v['scale']} angle {v['angle']} patches {v['patches']}" if "scale" in v else ""
    return f"{v.get('kind')} inliers {v.get('inliers', '-')} agreement {v.get('agreement', '-')}{more}"


def flowers_text(r: dict[str, Any]) -> str:
    lines = [f"flowers5 as shipped: {r['counts']}, graft train warns: {r['train_warns']} (exit {r['train_status']})"]
    for x in r["leakage"]:
        lines.append(
            f"  leakage {x['files'][0]} / {x['files'][1]} similarity {x['similarity']} {x['verdict']} inliers "
            f"{x['inliers']} agreement {x['agreement']}"
        )
    lines += [f"  sheet: {p}" for p in r["sheets"]]
    return "\n".join(lines)


def table(f: dict[str, Any]) -> str:
    lines = [
        "| check | figure |",
        "| --- | --- |",
    ]
    for name in PLANTED_SETS:
        r = f[f"copies_{name}"]
        lines.append(
            f"| planted copies {name} (10% of val into train, 1-2 edits) | {r['found']} of {r['planted']} found, "
            f"{r['reported']} reported: recall {r['recall']:.3f}, precision {r['precision']:.3f} "
            f"({r['precision_known_false']:.3f} with the shipped same-frame pairs counted false); "
            f"{len(r['not_planted'])} not planted |"
        )
    fl, hy = f["flowers5"], f["hymenoptera"]
    lines.append(f"| flowers5 as shipped | {fl['counts']}; graft train warns of near-copies: {fl['train_warns']} |")
    lines.append(f"| hymenoptera_data as shipped | exit status {hy['exit_status']}, {hy['counts']} |")
    for name in ("hymenoptera_data", "trashnet_half"):
        r = f[f"labels_{name}"]
        lines.append(
            f"| label noise 10% {name} ({r['flipped']} flipped of {r['images']}) | precision at N "
            f"{r['precision_at_n']:.3f}, AUROC {r['auroc']:.4f} |"
        )
    ep, et = f["exact_planted"], f["exact_trashnet"]
    lines.append(f"| exact duplicates planted | {ep['found']} of {ep['planted']} found, {ep['invented']} invented |")
    lines.append(
        f"| trashnet_half known identical cross-class files | {et['found']} of 3 found, {et['invented']} invented, "
        f"{et['conflicts']} label conflicts |"
    )
    lines.append(
        f"| graft train warns | planted hymenoptera: {f['train_warning']['planted']}, hymenoptera: "
        f"{f['train_warning']['hymenoptera']} |"
    )
    lines += ["", *_misses_table(f), "", *_timing_table(f)]
    return "\n".join(lines)


def _misses_table(f: dict[str, Any]) -> list[str]:
    lines = [
        "Planted copies missed (verdict: of the proposal, or of the pair checked alone when not proposed) and reported "
        "pairs that were not planted (true: through the planting or in KNOWN_COPIES):",
        "",
        "| set | pair | edit / finding | similarity | hash bits | proposed | verdict |",
        "| --- | --- | --- | ---: | ---: | --- | --- |",
    ]
    for name in PLANTED_SETS:
        r = f[f"copies_{name}"]
        for m in r["misses"]:
            lines.append(
                f"| {name} | {m['files'][0]} / {m['files'][1]} | miss: {m['transform']} | {m['similarity']} | "
                f"{m['hash_bits']} | {m['proposed']} | {_verdict(m['verdict'])} |"
            )
        for o in r["not_planted"]:
            lines.append(
                f"| {name} | {o['files'][0]} / {o['files'][1]} | not planted: {o['finding']} "
                f"({o['true'] or 'unjudged'}) | {o['similarity']} | | | {o['verdict']} inliers {o['inliers']} "
                f"agreement {o['agreement']} |"
            )
    for x in f["flowers5"]["leakage"]:
        lines.append(
            f"| flowers5 as shipped | {x['files'][0]} / {x['files'][1]} | leakage | {x['similarity']} | | | "
            f"{x['verdict']} inliers {x['inliers']} agreement {x['agreement']} |"
        )
    return lines


def _timing_table(f: dict[str, Any]) -> list[str]:
    lines = [
        'Start-up: `python -c "import torch, graft.insight.doctor.run"` (best of 3). Cold beyond = cold - start-up '
        "- features, and - scan too (the scan's validating decode feeds the feature pass). Warm beyond = warm - "
        "start-up, also without the similarity product (all pairs: quadratic; its share: of the steps doctor.json "
        "times) and per image. Verify: the copy check of the proposed pairs (warm), per 1,000 images and per pair.",
        "",
        "| images | load (1 min) | start-up s | cold s | features s | scan s | cold beyond features s | cold beyond "
        "scan + features s | warm s | warm beyond start-up s | similarity s (share) | warm beyond start-up and "
        "similarity, ms per image | proposed pairs | verify s | verify s per 1,000 images | verify ms per pair |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for r in f["timing"]:
        beyond = r["cold_s"] - r["cold_features_s"] - r["startup_s"]
        warm = r["warm_s"] - r["startup_s"]
        share = r["warm_similarity_s"] / sum(r["warm_timings"].values())  # of the doctor's own steps
        pairs, verify = r["proposed_pairs"], r["warm_verify_s"]
        lines.append(
            f"| {r['images']} | {r['load']} | {r['startup_s']} | {r['cold_s']} | {r['cold_features_s']} | "
            f"{r['cold_scan_s']} | {beyond:.2f} | {beyond - r['cold_scan_s']:.2f} | {r['warm_s']} | {warm:.2f} | "
            f"{r['warm_similarity_s']} ({share:.0%}) | {1000 * (warm - r['warm_similarity_s']) / r['images']:.2f} | "
            f"{pairs} | {verify} | {1000 * verify / r['images']:.2f} | {1000 * verify / max(1, pairs):.2f} |"
        )
    steps = list(f["timing"][0]["warm_timings"])
    return [
        *lines,
        "",
        "Warm steps (s, doctor.json's timings): " + ", ".join(steps),
        "",
        "| images | " + " | ".join(steps) + " |",
        "| ---: | " + " | ".join("---:" for _ in steps) + " |",
        *(
            f"| {r['images']} | " + " | ".join(str(r["warm_timings"].get(k, "")) for k in steps) + " |"
            for r in f["timing"]
        ),
    ]

"""Benchmarks side by side: the comparison reads supervised rows only."""



def test_compare_csv_leaves_out_self_supervised_rows(tmp_path) -> None:
    """A runs.csv's DINO rows score an untrained classifier: the comparison reads supervised rows only."""
    from selfdistill.bench.compare import load_results, supervised_label

    assert supervised_label("ce") and supervised_label("ips(preset=spec)") and supervised_label("not_a_method")
    assert not supervised_label("dino") and not supervised_label("dino [optim.lr=0.015]")
    path = tmp_path / "runs.csv"
    header = "dataset,model,method,seed,test_top1_last,primary_metric\n"
    path.write_text(header + "d,m,ce,0,40.0,top1\nd,m,dino [optim.lr=0.015],0,1.0,top1\nd,m,kd,0,42.5,top1\n")
    results = load_results(path)
    assert [(r.label, r.value) for r in results] == [("ce", 40.0), ("kd", 42.5)]

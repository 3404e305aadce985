"""Only the config keys a variant changed reach the comparison table."""

from constellation_kit.compare.config_diff import differing_keys, section_value, short_key, short_value


def test_keys_equal_in_every_run_are_left_out() -> None:
    runs = [{"lr": "0.1", "d_model": "128", "seed": "1"}, {"lr": "0.2", "d_model": "128", "seed": "1"}]
    assert differing_keys(runs) == ["lr"]


def test_a_key_missing_from_one_run_differs() -> None:
    runs = [{"lr": "0.1", "moe.top_k": "2"}, {"lr": "0.1"}]
    assert differing_keys(runs) == ["moe.top_k"]


def test_a_section_one_run_replaced_is_one_column_not_one_per_option_inside() -> None:
    # As MLflow holds them: the dense variant logs moe as None and an empty balance list; the MoE runs log
    # the options inside. Only the section, and what the MoE runs disagree on, differ.
    moe = {"m.moe.class_path": "k.MoEFeedForward", "m.moe.init_args.num_experts": "8", "m.moe.init_args.top_k": "2",
           "m.balance.0.class_path": "k.SwitchBalanceLoss", "m.balance.1.class_path": "k.RouterZLoss", "lr": "0.1"}
    top1 = {**moe, "m.moe.init_args.top_k": "1"}
    dense = {"m.moe": "None", "m.balance": "[]", "lr": "0.1"}
    assert differing_keys([moe, top1, dense]) == ["m.balance", "m.moe", "m.moe.init_args.top_k"]
    assert differing_keys([moe, moe, dense]) == ["m.balance", "m.moe"]
    assert [section_value(moe, "m.moe"), section_value(dense, "m.moe")] == ["k.MoEFeedForward", "None"]
    assert [section_value(moe, "m.balance"), section_value(dense, "m.balance")] == ["[2 items]", "[]"]
    assert section_value(dense, "m.moe.init_args.top_k") is None


def test_run_names_and_paths_are_not_differences() -> None:
    runs = [{"trainer.logger.init_args.run_name": "a", "ckpt_path": "x"},
            {"trainer.logger.init_args.run_name": "b", "ckpt_path": "y"}]
    assert differing_keys(runs) == []


def test_keys_and_values_are_shown_as_a_reader_would_write_them() -> None:
    assert short_key("model.init_args.network.init_args.d_model") == "model.network.d_model"
    assert short_key("model.init_args.network.init_args.norm.class_path") == "model.network.norm.class"
    assert short_value("constellation_kit.model.TopKRouter") == "TopKRouter"
    assert short_value("1.0e-06") == "1.0e-06"
    assert short_value("0.003") == "0.003"
    assert short_value(None) == "-"

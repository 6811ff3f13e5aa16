"""train.py's flags are generated from the config sections' fields (flows/flags.py): every setting has one, the seed's
historic names keep working, and values arrive typed."""
import pytest

import train as train_cli
from flows import flags

# the hand-written table train.py had before its flags were generated: flag -> dotted setting
HISTORIC = {
    "data": "data.source", "target": "data.target", "task": "data.task", "format": "data.format",
    "data_type": "data.data_type", "text_column": "text.text_column", "max_len": "text.max_len",
    "min_freq": "text.min_freq", "max_vocab": "text.max_vocab", "tokenizer": "text.tokenizer",
    "subwords": "text.subwords", "word_ngrams": "text.word_ngrams", "encoder": "model.encoder",
    "embedding_dim": "model.embedding_dim", "encoding_errors": "data.encoding_errors",
    "memory_budget_mb": "data.memory_budget_mb", "runner": "parallel.runner", "dask_address": "parallel.dask_address",
    "dask_workers": "parallel.dask_workers", "image_size": "image.image_size", "channels": "image.channels",
    "workers": "image.workers", "pretrained": "model.pretrained", "model_type": "model.type",
    "n_layers": "model.n_layers", "hidden_size": "model.hidden_size", "activation": "model.activation",
    "dropout": "model.dropout", "numeric_embedding": "model.numeric_embedding", "n_epochs": "train.n_epochs",
    "batch_size": "train.batch_size", "lr": "train.lr", "optimizer": "train.optimizer", "gpu_id": "train.gpu_id",
    "cpu_threads": "train.cpu_threads", "gpu_memory_fraction": "train.gpu_memory_fraction",
    "nproc_per_node": "train.distributed.nproc_per_node", "nnodes": "train.distributed.nnodes",
    "node_rank": "train.distributed.node_rank", "master_addr": "train.distributed.master_addr",
    "master_port": "train.distributed.master_port", "scheduler": "train.scheduler.name",
    "patience": "train.early_stopping.patience", "scaler": "preprocess.scaler", "missing": "preprocess.missing",
    "model_name": "export.model_name",
}


def test_the_historic_flag_names_reach_the_same_settings():
    short = flags.short_names([path for path, _ in flags.settings()])
    wrong = {flag: short.get(flag) for flag, path in HISTORIC.items() if short.get(flag) != path}
    assert not wrong


def test_every_setting_has_a_dotted_flag_and_values_arrive_typed():
    paths = [path for path, _ in flags.settings()]
    assert {"train.scheduler.gamma", "text.max_subwords", "baseline.max_train_rows"} <= set(paths)
    args = train_cli.parse_args(["--train.scheduler.gamma", "0.5", "--model.conv_channels", "[8, 16]", "--lr", "auto",
                                 "--no-lowercase", "--freeze_features", "--no_baseline", "--gpu_id", "-1",
                                 "--image.augment", "[{name: HorizontalFlip, p: 0.5}]"])
    built = train_cli.build_config(args)
    assert built.train.scheduler.gamma == 0.5 and built.model.conv_channels == [8, 16] and built.train.lr == "auto"
    assert built.text.lowercase is False and built.model.freeze_features is True and built.baseline.enabled is False
    assert built.image.augment == [{"name": "HorizontalFlip", "p": 0.5}] and built.train.gpu_id == -1
    untouched = train_cli.build_config(train_cli.parse_args([]))
    assert untouched.text.lowercase is True and untouched.baseline.enabled is True


def test_flags_override_a_config_file_without_dropping_its_other_fields(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train: {n_epochs: 50, scheduler: {name: StepLR, step_size: 4}}\n")
    built = train_cli.build_config(train_cli.parse_args(["--config", str(config), "--train.scheduler.gamma", "0.3"]))
    assert built.train.n_epochs == 50 and built.train.scheduler.step_size == 4 and built.train.scheduler.gamma == 0.3


def test_a_wrong_choice_is_refused_by_the_field_with_its_name(capsys):
    assert train_cli.main(["--activation", "swish"]) == 2
    assert "model.activation" in capsys.readouterr().err


def test_help_lists_each_setting_with_its_description(capsys):
    with pytest.raises(SystemExit):
        train_cli.parse_args(["--help"])
    shown = capsys.readouterr().out
    assert "--train.early_stopping.patience N, --patience N" in shown
    assert "30 for regression" in shown and "--text.max_subwords N, --max_subwords N" in shown

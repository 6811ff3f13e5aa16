"""model.encoder hf: a local Hugging Face model (here a tiny randomly initialised BERT with a WordPiece tokenizer
trained on the reviews sample, saved with save_pretrained inside the test; nothing is downloaded) trained through
train-flow, exported to ONNX, predicted by predict.py and served, all on raw text through the saved tokenizer; then
that model file as the model.pretrained of a later run, with the folder moved away."""
import io
import subprocess
import sys
import uuid

import pandas as pd
import pytest

pytest.importorskip("transformers")

from flows.config import ExportConfig  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from preprocessing.config import DataConfig, TextConfig  # noqa: E402
from tests.conftest import REPO  # noqa: E402
from training.config import TrainerConfig  # noqa: E402

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_POSITIONS = 48
TEXTS = ["정말 재미있어요 😍 강력 추천합니다", "너무 지루해요 👎 waste of time", None,
         "<b>그냥 그래요</b> it was okay", "x" * 5000, "the movie " * 200]


def make_tiny_bert(folder, vocab_size: int = 400):
    """A 2-layer, 32-wide BERT with random weights and a WordPiece tokenizer trained on the reviews sample, written
    as a Hugging Face save_pretrained folder."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from preprocessing.samples import reviews

    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(reviews()["text"].tolist(),
                                  trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL))
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   model_max_length=MAX_POSITIONS)
    config = BertConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=MAX_POSITIONS)
    BertModel(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def test_state_tokenizes_as_transformers_does_and_caps_max_len(tiny_bert):
    from transformers import AutoTokenizer

    from preprocessing import hf_text
    from preprocessing.samples import reviews

    train = reviews()["text"].head(200)
    target = {"name": "label", "task": "classification", "classes": ["a", "b"]}
    state, ids = hf_text.fit(train, target, TextConfig(hf_tokenizer=str(tiny_bert), max_len=1000))
    assert state["max_len"] == MAX_POSITIONS and ids.shape == (200, MAX_POSITIONS)  # capped by the model's
    transform = hf_text.HFTokenTransform(state)
    texts = [t if isinstance(t, str) else "" for t in TEXTS]
    reference = AutoTokenizer.from_pretrained(str(tiny_bert), local_files_only=True)(
        texts, truncation=True, max_length=MAX_POSITIONS)["input_ids"]
    encoded = transform.encode(texts)
    for row, expected in zip(encoded, reference):
        assert (row[row != 0] - 1).tolist() == expected  # 0 = padding, ids shifted by one
    state, _ = hf_text.fit(train, target, TextConfig(hf_tokenizer=str(tiny_bert)))
    assert 3 <= state["max_len"] < MAX_POSITIONS  # the 95th percentile of the reviews' lengths


def test_missing_folder_and_missing_setting_are_named():
    from flows.config import RunConfig
    from preprocessing.hf_text import HFModelError

    with pytest.raises(HFModelError, match="no such folder .*nowhere-bert"):
        RunConfig(data=DataConfig(data_type="text"), model=ModelConfig(encoder="hf", pretrained_hf="nowhere-bert"))
    with pytest.raises(ValueError, match="model.encoder hf needs model.pretrained_hf"):
        ModelConfig(encoder="hf")


def test_freeze_features_and_backbone_lr_mult(tiny_bert):
    import torch

    from training.fit import build_network
    from training.optim import param_groups

    config = ModelConfig(type="text", encoder="hf", pretrained_hf=str(tiny_bert), freeze_features=True)
    network, _ = build_network(config, 0, 3)
    assert not any(p.requires_grad for p in network.features.parameters())
    assert all(p.requires_grad for p in network.head.parameters())
    assert not network.train().features.training  # a frozen encoder's dropout stays off
    assert param_groups(network, 0.01) == list(network.head.parameters())
    network, _ = build_network(config.model_copy(update={"freeze_features": False}), 0, 3)
    head, backbone = param_groups(network, 0.01, backbone_lr_mult=0.1)
    assert head["lr"] == 0.01 and backbone["lr"] == pytest.approx(0.001)
    ids = torch.tensor([[3, 10, 20, 4, 0, 0], [3, 11, 4, 0, 0, 0]])
    network.eval()
    padded = network(torch.nn.functional.pad(ids, (0, 5)))
    assert torch.allclose(network(ids), padded, atol=1e-5)  # padding is masked out


def test_a_half_precision_checkpoint_trains_in_float32(tiny_bert, tmp_path):
    """A folder saved in bfloat16 (as many published checkpoints are) is loaded in float32: the head, the trainer
    and the export take float32."""
    import torch
    from transformers import AutoModel

    from training.fit import build_network

    AutoModel.from_pretrained(str(tiny_bert)).to(torch.bfloat16).save_pretrained(tmp_path)
    network, _ = build_network(ModelConfig(type="text", encoder="hf", pretrained_hf=str(tmp_path)), 0, 3)
    assert {p.dtype for p in network.parameters()} == {torch.float32}
    assert network(torch.tensor([[3, 10, 20, 4, 0]])).dtype == torch.float32


def test_a_model_file_as_pretrained_brings_its_tokenizer_and_encoder(tiny_bert, tmp_path):
    """--encoder hf --pretrained m.pth: the tokenizer comes from the model file (text.hf_tokenizer is set to it),
    the encoder is rebuilt from the config the network entry records: neither needs the folder."""
    import torch

    from flows.config import RunConfig
    from models import build_model, save_network
    from preprocessing import hf_text
    from preprocessing.hf_text import HFModelError
    from serving.bundle import save_bundle
    from training.fit import build_network

    config = RunConfig(data=DataConfig(data_type="text"), model=ModelConfig(encoder="hf", pretrained="m.pth"))
    assert config.text.hf_tokenizer == "m.pth"
    named = RunConfig(data=DataConfig(data_type="text"), model=ModelConfig(encoder="hf", pretrained="reviews-hf"))
    assert named.text.hf_tokenizer == "models:/reviews-hf@champion"  # a bare registered name, as serving reads it
    with pytest.raises(ValueError, match="give model.encoder hf too"):
        RunConfig(data=DataConfig(data_type="text"), model=ModelConfig(pretrained="m.pth"))

    from preprocessing.samples import reviews

    texts = reviews()["text"].head(100)
    target = {"name": "label", "task": "classification", "classes": ["a", "b"]}
    first_state, first_ids = hf_text.fit(texts, target, TextConfig(hf_tokenizer=str(tiny_bert)))
    model = ModelConfig(type="text", encoder="hf", pretrained_hf=str(tiny_bert), pooling="cls")
    first = build_model(model, first_state["vocab_size"], 2)
    with torch.no_grad():
        for parameter in first.features.parameters():
            parameter.add_(0.5)  # fine-tuned: other weights than the folder's
    save_network(tmp_path / "network.pt", model, first_state["vocab_size"], 2, first)
    saved = torch.load(tmp_path / "network.pt", weights_only=True)
    model_fn = save_bundle(tmp_path / "m.pth", onnx_bytes=b"onnx", data_type="text", task="classification",
                           preprocessing=first_state, network=saved)
    moved = tmp_path / "elsewhere"
    tiny_bert.rename(moved)
    try:
        state, ids = hf_text.fit(texts, target, TextConfig(hf_tokenizer=str(model_fn)))
        assert (state["tokenizer"], state["vocab_size"]) == (first_state["tokenizer"], first_state["vocab_size"])
        assert (ids == first_ids).all()
        network, built_from = build_network(ModelConfig(encoder="hf", pretrained=str(model_fn),
                                                        freeze_features=True), state["vocab_size"], 5,
                                            pretrained=saved)
        assert built_from.pooling == "cls" and network.head.out_features == 5
        assert all(torch.equal(v, first.features.state_dict()[k]) for k, v in network.features.state_dict().items())
        assert [n for n, p in network.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    finally:
        moved.rename(tiny_bert)

    plain = save_bundle(tmp_path / "plain.pth", onnx_bytes=b"onnx", data_type="text", task="classification",
                        preprocessing={"pipeline": "text/3"})
    with pytest.raises(HFModelError, match="was not trained with model.encoder hf"):
        hf_text.fit(texts, target, TextConfig(hf_tokenizer=str(plain)))
    with pytest.raises(HFModelError, match="could not be loaded.*not found"):
        hf_text.fit(texts, target, TextConfig(hf_tokenizer=str(tmp_path / "nowhere.pth")))


@pytest.mark.usefixtures("prefect_harness")
def test_hf_encoder_trains_exports_predicts_and_serves_raw_text(tiny_bert, tmp_path, mlflow_client):
    from flows.train_flow import train_flow
    from serving.inference import Predictor
    from tests.test_flow import mlflow_run
    from tests.test_serving import Server

    model_fn = tmp_path / "reviews-hf.pth"
    state = train_flow(data=DataConfig(source="sample:reviews", data_type="text"),
                       model=ModelConfig(encoder="hf", pretrained_hf=str(tiny_bert), pooling="cls",
                                         backbone_lr_mult=0.5),
                       train=TrainerConfig(n_epochs=1, batch_size=32, lr=0.003),
                       export=ExportConfig(register_model=False), experiment=f"hf-{uuid.uuid4().hex[:8]}",
                       model_fn=str(model_fn), return_state=True)
    assert state.is_completed(), state.message
    run = mlflow_run(mlflow_client, state)
    params, metrics = run.data.params, run.data.metrics
    assert params["model.encoder"] == "hf" and params["model.pooling"] == "cls"
    assert params["preprocess.hf_tokenizer"] == str(tiny_bert)
    assert metrics["export_max_abs_diff"] < 1e-4  # ONNX Runtime against torch on the test split

    rows = pd.DataFrame({"text": TEXTS, "label": ["?"] * len(TEXTS)})
    rows.to_csv(tmp_path / "texts.csv", index=False)
    # the model file is self-contained: predict.py needs neither the folder nor transformers
    moved = tmp_path / "elsewhere"
    tiny_bert.rename(moved)
    try:
        done = subprocess.run([sys.executable, "predict.py", "--model_fn", str(model_fn), "--input",
                               str(tmp_path / "texts.csv")], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        predicted = pd.read_csv(io.StringIO(done.stdout))
        direct = Predictor.load(model_fn).predict(rows)
        assert predicted["prediction"].tolist() == direct["prediction"].tolist()
        assert (predicted.filter(like="proba_") - direct.filter(like="proba_").values).abs().max().max() < 1e-6

        check = ("import sys; import pandas as pd; from serving.inference import Predictor; "
                 "Predictor.load(sys.argv[1]).predict(pd.DataFrame({'text': ['loved it']})); "
                 "print('transformers' in sys.modules)")
        imported = subprocess.run([sys.executable, "-c", check, str(model_fn)], cwd=REPO, capture_output=True,
                                  text=True, timeout=300)
        assert imported.stdout.strip() == "False", imported.stderr

        server = Server("--model", str(model_fn))
        try:
            response = server.post("/predict", json={"texts": TEXTS[:4]})
            assert response.status_code == 200, response.text
            assert [p["prediction"] for p in response.json()["predictions"]] == direct["prediction"][:4].tolist()
        finally:
            assert "Traceback" not in server.stop()

        later_run_starts_from(model_fn, tmp_path, mlflow_client)  # the folder still away: the model file suffices
    finally:
        moved.rename(tiny_bert)


def later_run_starts_from(model_fn, tmp_path, mlflow_client):
    """The model as the model.pretrained of a later run (a regression on another file, encoder frozen): its
    tokenizer and fine-tuned encoder are taken from the model file, the head is new; export, predict."""
    import torch

    from flows.train_flow import train_flow
    from preprocessing.samples import reviews
    from serving.bundle import load_bundle
    from serving.inference import Predictor
    from tests.test_flow import mlflow_run

    first = load_bundle(model_fn)
    ratings = reviews().sample(150, random_state=1)[["text", "rating"]]
    ratings.to_csv(tmp_path / "ratings.csv", index=False)
    later_fn = tmp_path / "ratings-hf.pth"
    state = train_flow(data=DataConfig(source=str(tmp_path / "ratings.csv"), data_type="text", target="rating",
                                       task="regression"),
                       model=ModelConfig(encoder="hf", pretrained=str(model_fn), freeze_features=True),
                       train=TrainerConfig(n_epochs=1, batch_size=32, lr=0.01),
                       export=ExportConfig(register_model=False), experiment=f"hf-{uuid.uuid4().hex[:8]}",
                       model_fn=str(later_fn), return_state=True)
    assert state.is_completed(), state.message
    params = mlflow_run(mlflow_client, state).data.params
    assert params["preprocess.hf_tokenizer"] == str(model_fn) and params["model.pooling"] == "cls"  # the first's
    later = load_bundle(later_fn)
    assert later.preprocessing["tokenizer"] == first.preprocessing["tokenizer"]
    assert later.preprocessing["vocab_size"] == first.preprocessing["vocab_size"]
    assert later.network["model_config"]["hf_config"] == first.network["model_config"]["hf_config"]
    before, after = first.network["state_dict"], later.network["state_dict"]
    encoder = [k for k in before if k.startswith("features.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # fine-tuned encoder, kept frozen
    assert before["head.weight"].shape[0] == 3 and after["head.weight"].shape[0] == 1  # a new head
    predicted = Predictor.load(later_fn).predict(pd.DataFrame({"text": TEXTS}))
    assert predicted["prediction"].notna().all() and len(predicted) == len(TEXTS)

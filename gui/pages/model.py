"""Model & data page: choose the model, dataset and weights every other page works on; summary cards."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import streamlit as st

from engine import services
from engine.errors import TopoPruneError
from engine.paths import topoprune_home
from engine.train import TrainConfig, train_model
from engine.zoo import CIFAR_MODELS, build_model
from gui import cache, components, jobs
from gui.guide import draw_start_here
from gui.plots.compare import latency_text
from gui.state import TRAIN_JOB, ModelRef, model_ref, set_model_ref

WEIGHTS = {
    "shipped": "Shipped baseline",
    "random": "Untrained (random init)",
    "upload": "Upload weights",
    "train": "Train a baseline here",
}


def upload_error(exc: Exception, path: Path, name: str) -> str:
    """The engine's message about an uploaded file in one sentence: its name instead of the server path, no
    internal detail after a colon inside parentheses."""
    text = str(exc).replace(str(path), name).replace(str(path.parent), "uploads")
    return re.sub(r"\(([^():]*): [^()]*\)", r"(\1)", text)


def dataset_input_size(name: str, data_dir: str | None) -> int:
    """The square image size of a dataset (32 where it cannot be loaded yet: the folder is still missing)."""
    try:
        return int(cache.load_dataset(name, data_dir, None).input_size)
    except TopoPruneError:
        return 32


st.title("Model & data")
draw_start_here()
st.caption(
    "Everything on the other pages uses the model chosen here. Built-in default: "
    "`cifar_resnet20` on the procedural `shapes10` dataset with the shipped checkpoint."
)

ref = model_ref()
with components.engine_errors("model list"):
    names = cache.model_names()
    shipped = cache.shipped_models(ref.dataset)
    left, right = st.columns(2)
    with left:
        arch = st.selectbox(
            "Model",
            names,
            index=names.index(ref.arch) if ref.arch in names else 0,
            key="arch",
            format_func=lambda n: n + ("  (shipped baseline)" if n in shipped else ""),
        )
        # Fashion-MNIST is offered where Debian's dataset-fashion-mnist is installed (or already chosen).
        datasets = cache.dataset_names()
        if ref.dataset not in datasets:
            datasets = [d for d in services.dataset_names() if d in datasets or d == ref.dataset]
        dataset = st.selectbox("Dataset", datasets, index=datasets.index(ref.dataset), key="dataset")
        data_dir = None
        if dataset == "fashion-mnist":
            data_dir = (
                st.text_input(
                    "Dataset folder (optional)",
                    value=ref.data_dir or "",
                    key="data_dir",
                    help="The four Fashion-MNIST *-ubyte.gz files; default: Debian's "
                    "/usr/share/datasets/fashion-mnist.",
                )
                or None
            )
        elif dataset != "shapes10":
            data_dir = (
                st.text_input(
                    "Dataset folder",
                    value=ref.data_dir or "",
                    key="data_dir",
                    help="CIFAR python batches, or an ImageFolder tree with train/ and test/.",
                )
                or None
            )
    with right:
        current = "shipped" if ref.weights == "shipped" else "random" if ref.weights == "random" else "upload"
        source = st.radio(
            "Weights",
            list(WEIGHTS),
            format_func=WEIGHTS.get,
            key="weights_source",
            index=list(WEIGHTS).index(current),
            horizontal=False,
        )
    num_classes = 100 if dataset == "cifar100" else ref.num_classes if dataset == "imagefolder" else 10
    input_size = None
    if (
        arch not in CIFAR_MODELS
    ):  # torchvision: cost and run it at the data's resolution unless told otherwise
        data_size = dataset_input_size(dataset, data_dir)
        same = arch == ref.arch and ref.input_size
        input_size = int(
            left.number_input(
                "Input size (px)",
                16,
                1024,
                int(ref.input_size if same else data_size),
                step=16,
                key=f"input_size_{arch}",
                help=f"Square input the model is costed and run at; the dataset's images "
                f"are {data_size}x{data_size} (torchvision's own default is 224).",
            )
        )
    # upload / train keep the weights in use until a file is actually loaded (a file of another architecture or
    # class count is dropped for the shipped baseline)
    kept = ref.weights
    if ref.weights not in ("shipped", "random") and (arch != ref.arch or num_classes != ref.num_classes):
        kept = "shipped"
    weights = source if source in ("shipped", "random") else kept

    if source == "upload":
        upload = st.file_uploader(
            "Weights for the chosen architecture (.safetensors or a weights-only state_dict .pt)",
            type=["safetensors", "pt", "pth"],
            key="upload",
        )
        accepted = False
        if upload is not None:
            blob = upload.getvalue()
            digest = hashlib.sha256(blob).hexdigest()[:16]
            folder = topoprune_home() / "uploads" / digest  # keeps the user's file name for messages
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / Path(upload.name).name
            if not path.exists():
                path.write_bytes(blob)
            candidate = ModelRef(
                arch=arch,
                dataset=dataset,
                data_dir=data_dir,
                weights=str(path),
                num_classes=num_classes,
                input_size=input_size,
            )
            try:  # checked here, so a file that does not load never reaches the other pages
                cache.load_model(candidate)
            except TopoPruneError as exc:
                st.error(upload_error(exc, path, Path(upload.name).name), icon=":material/error:")
            else:
                weights, accepted = str(path), True
        if not accepted:
            st.caption("Until a file is loaded, every page keeps the weights in use now.")
    if source == "train":
        st.caption(
            "Training does not change the weights in use; choose the trained baseline below when it is done."
        )
        epochs = st.number_input("Epochs", 1, 200, 5, key="train_epochs")
        job = st.session_state.get(TRAIN_JOB)
        if st.button("Train", type="primary", key="train_start", disabled=bool(job and job.active)):
            data = cache.load_dataset(dataset, data_dir, None)
            path = services.baseline_path(topoprune_home(), arch, dataset)
            path.parent.mkdir(parents=True, exist_ok=True)

            def save(model, result, arch=arch, dataset=dataset, data=data, path=path):
                request = services.TrainRequest(
                    arch, path, result.config, dataset, command="GUI: Model & data page"
                )
                return services.save_baseline(model, data, request, trained=result).path

            st.session_state[TRAIN_JOB] = jobs.start_training(
                model_factory=lambda: build_model(arch, num_classes=num_classes),
                data=data,
                epochs=int(epochs),
                save=save,
                train_model=train_model,
                train_config=TrainConfig,
            )
            st.rerun()

        def train_panel() -> None:
            job = st.session_state.get(TRAIN_JOB)
            snap = job.snapshot() if job else None
            components.job_status(snap, idle_text="Training runs in the background; the page stays usable.")
            if snap and snap.status == "done" and snap.result:
                st.success(
                    f"Trained and saved as {Path(snap.result['path']).name} in the TopoPrune home folder."
                )
                if st.button("Use the trained weights", key="use_trained"):
                    set_model_ref(
                        ModelRef(
                            arch=arch,
                            dataset=dataset,
                            data_dir=data_dir,
                            num_classes=num_classes,
                            weights=snap.result["path"],
                            input_size=input_size,
                        )
                    )
                    st.rerun()
            if snap and not snap.active and st.session_state.get("_train_seen") is not job:
                st.session_state["_train_seen"] = job
                st.rerun()

        job = st.session_state.get(TRAIN_JOB)
        components.poll_while(bool(job and job.active), train_panel)

    new_ref = ModelRef(
        arch=arch,
        dataset=dataset,
        data_dir=data_dir,
        weights=weights,
        num_classes=num_classes,
        input_size=input_size,
    )
    if new_ref != ref:
        set_model_ref(new_ref)
        ref = new_ref

st.divider()
loaded = None
with components.engine_errors("loading the model"):
    loaded = cache.load_model(ref)
if loaded is None:
    st.stop()
components.baseline_badge(loaded.trained, loaded.source)
with components.engine_errors("model summary"):
    summary = cache.model_summary(ref)
    cards = [
        ("Params", components.human(summary.get("params")), "trainable parameters"),
        (
            "MACs",
            components.human(summary.get("macs")),
            "conv + linear multiply-accumulates, batch 1; FLOPs = 2 x MACs",
        ),
        ("Groups", str(summary.get("groups", "n/a")), "coupled channel groups (units the policies act on)"),
    ]
    components.metric_cards(cards)
    recorded = (loaded.meta.get("metrics") or {}).get("test_acc")
    measured = st.session_state.get(f"_measured_{ref.key}", False)
    if not measured and st.button(
        "Measure test accuracy and CPU latency",
        key="measure",
        help="Evaluates the test split and times batch-1 inference on this machine.",
    ):
        st.session_state[f"_measured_{ref.key}"] = True
        st.rerun()  # redraw without the button, which has done its job
    acc = lat = None
    if measured:
        with components.engine_errors("test accuracy"):
            acc = cache.test_accuracy(ref)
        with components.engine_errors("latency"):
            lat = cache.latency_stats(ref, st.session_state.get(f"_latency_round_{ref.key}", 0))
    if acc is None and recorded is not None:
        acc = float(recorded)
    components.metric_cards(
        [
            (
                "Test top-1",
                f"{acc:.2f} %" if acc is not None else "not measured",
                "on the dataset's test split" + (" (recorded with the checkpoint)" if not measured else ""),
            ),
            (
                "CPU latency",
                f"{lat['median_ms']:.2f} ms" if lat else "not measured",
                f"median of 5 interleaved repeats, batch 1, {cache.input_size_for(ref)} px, this machine",
            ),
        ]
    )
    if lat:
        st.caption(f"CPU latency: {latency_text(lat)}")
        if lat.get("noisy"):
            st.warning(
                "The latency repeats spread by more than 10 % of the median: the machine is busy. "
                "Re-measure when it is quieter.",
                icon=":material/speed:",
            )
        if st.button("Re-measure latency", key="remeasure_latency"):
            round_key = f"_latency_round_{ref.key}"
            st.session_state[round_key] = st.session_state.get(round_key, 0) + 1
            st.rerun()
    data = cache.dataset_for(ref)
    st.caption(
        f"Dataset `{data.name}`: {data.num_classes} classes, {data.input_size}x{data.input_size} images; "
        f"train {data.size('train')}, val {data.size('val')} (carved from train), test {data.size('test')}."
    )

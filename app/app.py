"""The gpt-ds Streamlit page: try a trained model, see how it learned and what its heads attend to, or
talk to a chat model (one whose config.json has a chat template: a Chat tab instead of Generate and Attention).

Run: `streamlit run app/app.py [-- --model MODEL_DIR] [--runs DIR ...]`. The sidebar lists the model
folders found under runs/ of the working directory (or under each --runs DIR) and the one given with
--model, and any folder can be typed. This file is layout only: loading, prompts, streaming and
attention data come from gpt_ds.inference, a chat's prompt and reply from gpt_ds.chat; discovery, the
model card, the curves, the generation controls and the charts from the modules beside this file
(streamlit puts this folder first on sys.path, so they import as top-level modules). Every problem
becomes a message in the page, never a traceback.
"""

from __future__ import annotations

import html
import sys
from pathlib import Path

import charts
import streamlit as st
from card import LOSS_LIKE, ModelCard, format_accuracy, format_count, format_loss, model_card
from controls import DEFAULT_SAMPLING, sampling_from_controls
from curves import RunCurves, read_run_curves
from discovery import AppArgs, discover_model_folders, display_name, files_fingerprint, parse_app_args, resolve_model_folder

from gpt_ds import chat, tags
from gpt_ds.errors import UserError
from gpt_ds.generate import Sampling
from gpt_ds.inference import StreamUpdate, attention_map, encode_prompt, inference_device, load_for_inference, stream_continuation
from gpt_ds.run_dir import RunDir

PAGE_CSS = """
<style>
.gen-box {white-space: pre-wrap; font-family: ui-monospace, SFMono-Regular, Menlo, monospace;
  font-size: 0.95rem; line-height: 1.55; padding: 1rem 1.2rem; border-radius: 0.6rem;
  background: rgba(76, 120, 168, 0.06); border: 1px solid rgba(76, 120, 168, 0.25); min-height: 4rem;}
.gen-prompt {color: rgba(49, 51, 63, 0.65);}
.gen-continuation {color: #1d4e89; font-weight: 600;}
.chat-text {white-space: pre-wrap;}
</style>
"""
OTHER_FOLDER = "Type a folder path…"
CHAT_STATE = "chat"  # st.session_state's conversation: {"folder": the model's folder, "turns": [message, ...]}


@st.cache_resource(show_spinner="Loading the weights…", max_entries=4)
def cached_model(folder: str, fingerprint: tuple, device: str, dtype):
    """The model and its info, loaded once per (folder contents, device, dtype): generating again reuses them."""
    return load_for_inference(Path(folder), device, dtype)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_curves(tb_dir: str, fingerprint: tuple) -> RunCurves:
    return read_run_curves(Path(tb_dir))


@st.cache_data(show_spinner=False, ttl=5)  # every widget change reruns the page: walk runs/ at most every 5 s
def found_model_folders(roots: tuple[str, ...]) -> list[str]:
    return [str(folder) for folder in discover_model_folders(Path(root) for root in roots)]


def choose_model_folder(args: AppArgs) -> str:
    """The sidebar's model choice: found folders (and --model), or a typed path."""
    st.sidebar.header("Model")
    options = found_model_folders(tuple(str(root.resolve()) for root in args.runs))
    if args.model is not None:
        given = str(args.model.resolve()) if args.model.exists() else str(args.model)
        options = [given] + [option for option in options if option != given]
    options.append(OTHER_FOLDER)
    choice = st.sidebar.selectbox(
        "Model folder",
        options,
        format_func=lambda option: option if option == OTHER_FOLDER else display_name(Path(option)),
        key="model_choice",
        help=f"Model folders found under {', '.join(display_name(root) for root in args.runs)} (and the one given with --model).",
    )
    if choice == OTHER_FOLDER:
        return st.sidebar.text_input("Model folder path", key="typed_folder", placeholder="runs/my-run/model")
    return choice


def generation_controls(context: int) -> Sampling:
    st.sidebar.header("Generation")
    defaults = DEFAULT_SAMPLING
    max_new = st.sidebar.slider("Max new tokens", 1, max(1, min(1024, context)), min(defaults.max_new_tokens, context), key="max_new_tokens")
    temperature = st.sidebar.slider("Temperature", 0.0, 2.0, defaults.temperature, 0.05, key="temperature", help="0 = greedy: always the most likely token.")
    top_k = st.sidebar.number_input("Top-k", 0, 50257, defaults.top_k or 0, key="top_k", help="Sample among the k most likely tokens; 0 = off.")
    top_p = st.sidebar.slider("Top-p", 0.05, 1.0, defaults.top_p or 1.0, 0.05, key="top_p", help="Sample among the smallest set of tokens holding this probability; 1 = off.")
    fixed_seed = st.sidebar.checkbox("Fixed seed", True, key="fixed_seed", help="The same seed and settings give the same text.")
    seed = st.sidebar.number_input("Seed", 0, 2**31 - 1, defaults.seed, key="seed", disabled=not fixed_seed)
    return sampling_from_controls(int(max_new), float(temperature), int(top_k), float(top_p), int(seed) if fixed_seed else None)


def show_model_card(card: ModelCard, curves: RunCurves | None) -> None:
    """Two rows of figures; the loss figures carry a sparkline of their curve when the run logged one."""

    def sparkline(tag: str) -> list[float] | None:
        return [value for _, value in curves.series[tag]] if curves is not None and curves.has(tag) else None

    with st.container(border=True):
        st.markdown(f"**{card.name}**" + (f" · preset `{card.preset}`" if card.preset else "")
                    + f" · architecture **{card.architecture}** · tokenizer `{card.tokenizer}`"
                    + (f" · fine-tuned from `{card.parent}`" if card.parent else ""))
        shape, training = st.columns(4), st.columns(4 if card.val_bpb is None else 5)
        shape[0].metric("Parameters", format_count(card.parameters), help=f"{card.parameters:,} parameters")
        shape[1].metric("Context", f"{card.context} tokens")
        shape[2].metric("Layers · heads · width", f"{card.n_layer} · {card.n_head} · {card.n_embd}")
        shape[3].metric("Tokens trained", format_count(card.tokens), help=None if card.tokens is None else f"{card.tokens:,} tokens")
        training[0].metric("Steps", format_count(card.steps))
        training[1].metric("Final train loss", format_loss(card.train_loss), chart_data=sparkline(tags.TRAIN_LOSS))
        training[2].metric("Final val loss", format_loss(card.val_loss), chart_data=sparkline(tags.VAL_LOSS))
        if card.target_reached is None:
            training[3].metric("Loss target", format_loss(card.target_loss))
        else:
            at_step = f" at step {card.target_step}" if card.target_step is not None else ""
            verdict = f"reached{at_step}" if card.target_reached else "not reached"
            training[3].metric("Loss target", format_loss(card.target_loss), verdict,
                               delta_color="green" if card.target_reached else "red", delta_arrow="off")
        if card.val_bpb is not None:
            training[4].metric("Final val bpb", format_loss(card.val_bpb), chart_data=sparkline(tags.VAL_BPB),
                               help="validation bits per byte: comparable across tokenizers (docs/training.md)")
        if card.eval_tasks:
            for column, (task, scores) in zip(st.columns(len(card.eval_tasks)), card.eval_tasks.items()):
                column.metric(f"{task} acc_norm", format_accuracy(scores["acc_norm"]),
                              f"acc {format_accuracy(scores['acc'])}", delta_color="off", delta_arrow="off",
                              chart_data=sparkline(tags.eval_acc_norm(task)),
                              help=f"multiple choice, {scores['n']:.0f} examples, at the last evaluation "
                                   "(--eval-tasks, docs/training.md)")
        if card.benchmarks:
            for column, (task, metric, value) in zip(st.columns(len(card.benchmarks)), card.benchmarks):
                shown = format_loss(value) if metric in LOSS_LIKE else format_accuracy(value)
                column.metric(f"{task} {metric}", shown, help="launch/eval.py's result for these weights (docs/eval.md)")


def as_html_line(text: str) -> str:
    """Text as HTML on one line: st.markdown passes an HTML block through untouched only up to the
    first blank line, after which model output would be parsed as Markdown (code blocks, headings)."""
    return html.escape(text).replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")


def generated_html(prompt: str, continuation: str) -> str:
    return (
        f'<div class="gen-box"><span class="gen-prompt">{as_html_line(prompt)}</span>'
        f'<span class="gen-continuation">{as_html_line(continuation)}</span></div>'
    )


def speed_caption(update: StreamUpdate) -> str:
    return f"{update.tokens} tokens in {update.seconds:.2f} s · {update.tokens_per_sec:.1f} tokens/s"


def generate_tab(model, info, folder: str, sampling: Sampling) -> None:
    prompt = st.text_area("Prompt", "ROMEO:\n", height=140, key="prompt")
    pressed = st.button("Generate", type="primary", key="generate")
    output, speed = st.empty(), st.empty()
    if pressed:
        try:
            prompt_ids = encode_prompt(prompt, info.tokenizer, info.config.block_size)
        except UserError as err:
            st.session_state.pop("last_generation", None)
            output.warning(str(err))
            return
        update = None
        for update in stream_continuation(model, info.tokenizer, prompt_ids, sampling):
            output.markdown(generated_html(prompt, update.text), unsafe_allow_html=True)
            speed.caption(f"Generating… {update.tokens} tokens · {update.tokens_per_sec:.1f} tokens/s")
        if update is None:
            output.info("The model ended the text at once (it chose the end-of-text token): try another seed or prompt.")
            update = StreamUpdate(text="", tokens=0, seconds=0.0)
        last = {"folder": folder, "prompt": prompt, "update": update}
        st.session_state["last_generation"] = last
    else:
        last = st.session_state.get("last_generation")
        if not (last and last["folder"] == folder):
            return
        # Keep the last result on screen while other controls change.
        output.markdown(generated_html(last["prompt"], last["update"].text), unsafe_allow_html=True)
    done = last["update"]
    speed.caption(f"Done: {speed_caption(done)}")


def chat_html(text: str) -> str:
    return f'<div class="chat-text">{as_html_line(text)}</div>'


def show_turn(turn: dict) -> None:
    """One message of the history; an assistant's with the note of what its prompt left out and its speed."""
    with st.chat_message(turn["role"]):
        if turn.get("note"):
            st.caption(turn["note"])
        if turn["content"]:
            st.markdown(chat_html(turn["content"]), unsafe_allow_html=True)
        elif turn["role"] == "assistant":
            st.caption("(no reply: the model ended its turn at once)")
        if turn.get("speed"):
            st.caption(turn["speed"])


def chat_tab(model, info, folder: str, sampling: Sampling) -> None:
    """The conversation: its history, the reply to a new message streamed in, a system prompt and Clear."""
    st.sidebar.header("Conversation")
    system = st.sidebar.text_area("System prompt", "", key="system_prompt",
                                  help="A system message that opens the conversation; blank = none.")
    clear = st.sidebar.button("Clear conversation", key="clear_chat")
    state = st.session_state.get(CHAT_STATE)
    if clear or state is None or state["folder"] != folder:  # another model: a new conversation
        state = st.session_state[CHAT_STATE] = {"folder": folder, "turns": []}
    turns = state["turns"]
    history = st.container()  # above the input box, where a new message and its reply go too
    with history:
        for turn in turns:
            show_turn(turn)
    text = st.chat_input("Message the model", key="chat_input")
    if not (text and text.strip()):
        if not turns:
            st.caption("Write a message below; the reply streams in. Clear conversation (sidebar) starts over.")
        return
    block_size = info.config.block_size
    opening = [{"role": "system", "content": system}] if system.strip() else []
    user = {"role": "user", "content": text}
    messages = opening + [{"role": t["role"], "content": t["content"]} for t in turns] + [user]
    try:
        prompt = chat.fit_prompt(messages, info.tokenizer, block_size, chat.reply_budget(block_size, sampling.max_new_tokens))
    except UserError as err:  # the message is not kept: the conversation stays one the model can continue
        st.warning(str(err))
        return
    note = chat.dropped_note(prompt.dropped, block_size).capitalize() + "." if prompt.dropped else None
    with history:
        show_turn(user)
        slot = st.empty()
        with slot.container(), st.chat_message("assistant"):
            if note:
                st.caption(note)
            body, speed = st.empty(), st.empty()
            for update in chat.stream_reply(model, info, prompt, sampling):  # at least one update, maybe empty
                body.markdown(chat_html(update.text), unsafe_allow_html=True)
                speed.caption(f"Writing… {speed_caption(update)}")
        reply = {"role": "assistant", "content": update.text, "note": note, "speed": speed_caption(update)}
        with slot.container():  # the finished reply, shown as the history shows it
            show_turn(reply)
    turns += [user, reply]


def run_curves(folder: Path) -> RunCurves | None:
    """The curves of the run the model folder belongs to; None when it belongs to none."""
    run = RunDir.of_model(folder)
    if run is None:
        return None
    return cached_curves(str(run.tb), files_fingerprint(run.tb))


def curves_tab(folder: Path, card: ModelCard, curves: RunCurves | None) -> None:
    if curves is None:
        st.info(f"This model folder is not part of a training run (no {RunDir.TB}/ folder beside it), so there are no curves to show.")
        return
    tb_dir = RunDir.of_model(folder).tb
    if not (curves.has(tags.TRAIN_LOSS) or curves.has(tags.VAL_LOSS)):
        st.info(f"The run's TensorBoard logs ({display_name(tb_dir)}) hold no loss curves yet.")
        return
    st.markdown("**Loss**" + (f" — target {format_loss(card.target_loss)} (dashed)" if card.target_loss is not None else ""))
    st.altair_chart(charts.loss_chart(curves, card.target_loss), width="stretch")
    if curves.has(tags.LR):
        st.markdown("**Learning rate**")
        st.altair_chart(charts.lr_chart(curves), width="stretch")
    st.caption(f"Read from {display_name(tb_dir)} · `tensorboard --logdir {display_name(tb_dir)}` shows every metric.")


def attention_tab(model, info, folder: str) -> None:
    config = info.config
    left, right, third = st.columns([1, 1, 2])
    layer = left.selectbox("Layer", range(config.n_layer), key="attn_layer")
    head = right.selectbox("Head", range(config.n_head), key="attn_head")
    last = st.session_state.get("last_generation")
    can_extend = bool(last and last["folder"] == folder and last["prompt"] == st.session_state.get("prompt") and last["update"].text)
    with third:
        st.write("")
        extend = st.checkbox("Include the generated continuation", value=False, disabled=not can_extend, key="attn_extend")
    text = st.session_state.get("prompt", "")
    if extend and can_extend:
        text += last["update"].text
    try:
        ids = encode_prompt(text, info.tokenizer)  # no length limit: the map keeps the last block
        attention = attention_map(model, info.tokenizer, ids, int(layer), int(head))
    except UserError as err:
        st.info(str(err))
        return
    st.altair_chart(charts.attention_chart(attention), width="content")
    shown = len(attention.labels)
    note = f"Layer {attention.layer}, head {attention.head}: each row is a token and how it spreads its attention over the tokens before it."
    if shown < attention.total_tokens:
        note += f" Showing the last {shown} of {attention.total_tokens} tokens."
    st.caption(note)


def page() -> None:
    st.set_page_config(page_title="gpt-ds playground", page_icon="🪶", layout="wide")
    args = parse_app_args(sys.argv[1:])
    folder_text = choose_model_folder(args)
    device, dtype = inference_device()
    st.sidebar.caption(f"Device: **{device}** · {str(dtype).removeprefix('torch.')}")

    st.title("gpt-ds playground")
    st.caption("A GPT trained from scratch with DeepSpeed: write a prompt, watch it continue, look inside its attention heads.")
    st.markdown(PAGE_CSS, unsafe_allow_html=True)
    if not folder_text.strip():
        st.info(
            "No model chosen yet. Choose a model folder in the sidebar or type the path of one "
            "(a folder holding config.json and model.safetensors, e.g. RUN_DIR/model after training). "
            "Model folders under runs/ (or --runs DIR) are listed automatically."
        )
        return
    try:
        folder = resolve_model_folder(folder_text)
        model, info = cached_model(str(folder.resolve()), files_fingerprint(folder), device, dtype)
    except UserError as err:
        st.error(f"**Cannot use this model.** {err}")
        st.caption("Choose another model folder in the sidebar, or fix this one and rerun the page (R).")
        return
    card = model_card(model, info)
    try:
        curves, curves_problem = run_curves(folder), None
    except UserError as err:  # damaged logs must not hide a model that loads fine
        curves, curves_problem = None, str(err)
    show_model_card(card, curves)
    sampling = generation_controls(info.config.block_size)
    chat_model = info.chat_template is not None
    tabs = st.tabs(["Chat", "Training curves"] if chat_model else ["Generate", "Training curves", "Attention"])
    with tabs[0]:
        (chat_tab if chat_model else generate_tab)(model, info, str(folder), sampling)
    with tabs[1]:
        if curves_problem:
            st.warning(curves_problem)
        else:
            curves_tab(folder, card, curves)
    if not chat_model:
        with tabs[2]:
            attention_tab(model, info, str(folder))


try:
    page()
except UserError as err:
    st.error(str(err))
except Exception as err:  # the last guard: a message, never a traceback, and the page stays usable
    st.error(f"Something went wrong: {type(err).__name__}: {err}. Change the input or choose another model; the app keeps running.")

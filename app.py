"""Gradio app: search images by sentence, browse nearest captions, review noisy web tags.

    python app.py                                   # the offline default in assets/
    python app.py --model USER/MODEL --gallery USER/DATASET

Search: a sentence returns the best gallery images; selecting one shows its
nearest captions (image-to-text over the caption pool) and its web tags; an
uploaded image gets its nearest captions and similar images.  Review: web images
ordered by how little the model agrees with their tags; each vote is stored at
once in SQLite (``<data-dir>/votes.db``) and ``python -m training.feedback
export`` turns the votes into the corrections table of the next training run.

Works as a Hugging Face Space (see the README front matter): with OAuth enabled
reviewers sign in with their Hub account and the review tab stays read-only
until they do.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from vse.feedback import FeedbackStore, VoteError, start_backup
from vse.images import ImageLoadError
from vse.retrieval import QueryError, RetrievalService
from vse.text import normalize_tag

DEFAULT_MODEL = "assets/model"
DEFAULT_GALLERY = "assets/gallery"
DEFAULT_DATA_DIR = os.environ.get("VSE_DATA_DIR", "feedback")
DEFAULT_TOP_K = 12
CAPTIONS_SHOWN = 5
SIMILAR_SHOWN = 8
CONCURRENCY = 4  # requests the app serves at once; more wait in Gradio's queue
VOTES_PER_MINUTE = int(os.environ.get("VSE_VOTES_PER_MINUTE", "120"))
# On a Space, a dataset repo that receives a snapshot of the raw votes every 10 minutes.
BACKUP_REPO = os.environ.get("VSE_FEEDBACK_REPO")
# OAuth exists only on a Space with `hf_oauth: true`; locally reviewers type a name.
OAUTH_ENABLED = bool(os.environ.get("SPACE_ID") and os.environ.get("OAUTH_CLIENT_ID"))

log = logging.getLogger("app")
IMAGE_SIGNATURES = {b"\x89PNG": ".png", b"\xff\xd8\xff": ".jpg", b"GIF8": ".gif"}


def image_suffix(data: bytes) -> str | None:
    """File suffix of encoded image bytes the browser can show as they are, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return next((suffix for signature, suffix in IMAGE_SIGNATURES.items() if data.startswith(signature)), None)


@dataclass
class AppConfig:
    model: str = DEFAULT_MODEL  # Hub repo id or local folder
    gallery: str = DEFAULT_GALLERY  # datasets source or the assets gallery folder
    data_dir: str = DEFAULT_DATA_DIR  # votes.db and cached gallery embeddings
    reviewer: str = "local-reviewer"  # reviewer name when OAuth is off
    index: str = "auto"  # faiss index kind, see vse.index
    votes_per_minute: int = VOTES_PER_MINUTE


class VSEApp:
    """Typed handlers over a retrieval service and a feedback store."""

    def __init__(self, service: RetrievalService, store: FeedbackStore, config: AppConfig):
        self.service, self.store, self.config = service, store, config
        self.queue = service.review_queue()
        self.thumbnail_dir = Path(config.data_dir) / "thumbnails"
        self.thumbnail_dir.mkdir(parents=True, exist_ok=True)
        # Thumbnails are public gallery images written once under content hashes:
        # served in place, not hashed and copied into Gradio's cache on every search.
        gr.set_static_paths([self.thumbnail_dir])

    @classmethod
    def create(cls, config: AppConfig) -> VSEApp:
        service = RetrievalService.load(config.model, config.gallery, config.data_dir, config.index)
        store = FeedbackStore(os.path.join(config.data_dir, "votes.db"))
        if BACKUP_REPO:
            start_backup(store, BACKUP_REPO)
            log.info("votes are backed up to the Hub dataset %s", BACKUP_REPO)
        return cls(service, store, config)

    # ------------------------------------------------------------ search tab
    def thumbnail_file(self, index: int) -> str:
        """A file holding the gallery image's encoded bytes (written once, atomically).

        Returning files (not PIL images) spares re-encoding every result and lets
        Gradio serve the same bytes to concurrent requests safely.
        """
        data = self.service.gallery.items[index].image
        suffix = image_suffix(data)
        if suffix is None:
            buffer = io.BytesIO()
            self.service.gallery.image(index).save(buffer, format="PNG")
            data, suffix = buffer.getvalue(), ".png"
        path = self.thumbnail_dir / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        if not path.exists():
            temporary = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            temporary.write_bytes(data)
            os.replace(temporary, path)
        return str(path)

    def _gallery_cells(self, hits) -> list[tuple[str, str]]:
        items = self.service.gallery.items
        return [
            (self.thumbnail_file(h.index), f"{items[h.index].title or items[h.index].id} · {h.score:.2f}") for h in hits
        ]

    def _results_table(self, hits) -> list[list]:
        items = self.service.gallery.items
        return [[rank + 1, items[h.index].title, items[h.index].id, round(h.score, 4)] for rank, h in enumerate(hits)]

    @torch.inference_mode()
    def search(self, query: str, k: float) -> tuple[list, list[list], list[int]]:
        """Top-k gallery images for a sentence: gallery cells, a results table, hit indices."""
        try:
            hits = self.service.search_text(query, int(k))
        except QueryError as err:
            raise gr.Error(str(err)) from None
        return self._gallery_cells(hits), self._results_table(hits), [h.index for h in hits]

    def _captions_table(self, embedding: torch.Tensor) -> list[list]:
        pool = self.service.gallery
        hits = self.service.nearest_captions(embedding, CAPTIONS_SHOWN)
        return [[pool.caption_texts[h.index], pool.caption_owners[h.index], round(h.score, 4)] for h in hits]

    @torch.inference_mode()
    def select_result(self, hit_indices: list[int], event: gr.SelectData) -> tuple[list[list], list[list], str, list]:
        """Nearest captions, web tags and visually similar images of the selected result."""
        if not hit_indices or event.index is None or event.index >= len(hit_indices):
            return [], [], "", []
        index = hit_indices[event.index]
        item = self.service.gallery.items[index]
        embedding = self.service.image_embedding(index)
        similar = self._gallery_cells(self.service.similar_images(embedding, SIMILAR_SHOWN, exclude=index))
        return self._captions_table(embedding), [[tag] for tag in item.tags], item.title or item.id, similar

    @torch.inference_mode()
    def describe_upload(self, image: Image.Image | None) -> tuple[list[list], list]:
        """Nearest captions and visually similar gallery images of an uploaded picture."""
        if image is None:
            raise gr.Error("Upload an image first.")
        try:
            embedding = self.service.embed_image(image)
        except ImageLoadError as err:
            raise gr.Error(f"This image cannot be used: {err}") from None
        return self._captions_table(embedding), self._gallery_cells(
            self.service.similar_images(embedding, SIMILAR_SHOWN)
        )

    # ------------------------------------------------------------ review tab
    def reviewer(self, typed_name: str | None, profile: gr.OAuthProfile | None) -> str:
        """Who votes: the Hub username under OAuth, else the typed (or configured) name."""
        if OAUTH_ENABLED:
            if profile is None:
                raise gr.Error("Sign in with Hugging Face to review tags.")
            return profile.username
        name = " ".join(str(typed_name or self.config.reviewer).split())
        if not name:
            raise gr.Error("Enter a reviewer name first.")
        return name[:100]

    def _vote(self, user: str, image_id: str, tag: str, verdict: str) -> None:
        if self.store.recent_votes(user, 60) >= self.config.votes_per_minute:
            raise gr.Error(f"Too many votes: at most {self.config.votes_per_minute} a minute. Please slow down.")
        try:
            self.store.add_vote(user, image_id, tag, verdict, self.service.revision)
        except VoteError as err:
            raise gr.Error(str(err)) from None

    def review_view(self, position: int, user: str | None = None) -> tuple:
        """Image, title, score, tag choices (ticked = marked wrong by this user), counter."""
        if not self.queue:
            return None, "No tagged images in this gallery.", "", gr.update(choices=[], value=[]), self.counter(user)
        position = position % len(self.queue)
        index = self.queue[position]
        item = self.service.gallery.items[index]
        wrong = (
            {v.tag for v in self.store.votes(image_id=item.id, user=user) if v.verdict == "wrong"} if user else set()
        )
        ticked = [tag for tag in item.tags if normalize_tag(tag) in wrong]
        score = float(self.service.tag_agreement()[index])
        detail = f"Image {position + 1} of {len(self.queue)} · image-tag agreement {score:.3f} (lowest first)"
        return (
            self.service.gallery.image(index),
            item.title or item.id,
            detail,
            gr.update(choices=item.tags, value=ticked),
            self.counter(user),
        )

    def counter(self, user: str | None) -> str:
        mine = len(self.store.reviewed_images(user)) if user else 0
        return f"{mine} images reviewed by you · {self.store.count()} votes stored in total"

    def current_item(self, position: int):
        return self.service.gallery.items[self.queue[position % len(self.queue)]]

    def mark_tags(
        self, position: int, ticked: list[str], previous: list[str], name: str, profile: gr.OAuthProfile | None
    ):
        """Store a vote at once for each tag whose tick changed (ticked = wrong, unticked = right)."""
        user = self.reviewer(name, profile)
        item = self.current_item(position)
        for tag in set(ticked) ^ set(previous or []):
            self._vote(user, item.id, tag, "wrong" if tag in ticked else "right")
        return ticked, self.counter(user)

    def add_tag(self, position: int, text: str, name: str, profile: gr.OAuthProfile | None):
        user = self.reviewer(name, profile)
        tags = [t.strip() for t in str(text or "").split(",") if t.strip()]
        if not tags:
            raise gr.Error("Type the missing tag (several: separate them with commas).")
        for tag in tags:
            self._vote(user, self.current_item(position).id, tag, "added")
        return "", self.counter(user)

    def next_image(self, position: int, ticked: list[str], name: str, profile: gr.OAuthProfile | None):
        """Unticked tags count as right; then show the next image this reviewer has not reviewed."""
        user = self.reviewer(name, profile)
        item = self.current_item(position)
        voted = {v.tag for v in self.store.votes(image_id=item.id, user=user)}
        for tag in item.tags:
            if tag not in (ticked or []) and normalize_tag(tag) not in voted and normalize_tag(tag):
                self._vote(user, item.id, tag, "right")
        return self.skip(position, name, profile)

    def skip(self, position: int, name: str, profile: gr.OAuthProfile | None):
        user = self.reviewer(name, profile)
        done = self.store.reviewed_images(user)
        for step in range(1, len(self.queue) + 1):
            candidate = (position + step) % len(self.queue)
            if self.current_item(candidate).id not in done:
                break
        view = self.review_view(candidate, user)
        return (candidate, *view, view[3]["value"])

    def open_review(self, position: int, name: str, profile: gr.OAuthProfile | None):
        """The current image; the controls stay read-only until the reviewer is known."""
        user = None
        with contextlib.suppress(gr.Error):
            user = self.reviewer(name, profile)
        view = self.review_view(position, user)
        controls = [gr.update(interactive=user is not None) for _ in range(4)]
        return (*view, view[3]["value"], *controls)

    # ------------------------------------------------------------ API
    def vote_api(
        self, image_id: str, tag: str, verdict: str, reviewer: str, profile: gr.OAuthProfile | None = None
    ) -> str:
        """Store one vote (verdict: wrong, right or added); returns the counter."""
        user = self.reviewer(reviewer, profile)
        if image_id not in self.service.gallery.position:
            raise gr.Error(f"Unknown image id {image_id!r}.")
        self._vote(user, image_id, tag, verdict)
        return self.counter(user)


def ping() -> str:
    """Health check; also the protocol's round-trip floor in benchmarks/app.py."""
    return "ok"


def build_ui(app: VSEApp) -> gr.Blocks:
    with gr.Blocks(title="Webly supervised image-text retrieval") as demo:
        gr.Markdown("# Image-text retrieval\nSearch images by sentence, see what the model says about an image, "
                    "and help clean noisy web tags.")  # fmt: skip
        with gr.Tab("Search", id="search"):
            hit_state = gr.State([])
            with gr.Row():
                query = gr.Textbox(label="Describe an image", placeholder="a red apple", scale=4, max_length=500)
                top_k = gr.Slider(1, 48, value=DEFAULT_TOP_K, step=1, label="results")
                search_button = gr.Button("Search", variant="primary", elem_id="search-button")
            results = gr.Gallery(label="Results", columns=6, height="auto", allow_preview=False, elem_id="results")
            with gr.Row():
                selected_title = gr.Textbox(label="Selected image", interactive=False)
            with gr.Row():
                captions = gr.Dataframe(headers=["nearest caption", "image", "score"], datatype=["str", "str", "number"],
                                        label="Nearest captions", interactive=False, elem_id="captions")  # fmt: skip
                tags = gr.Dataframe(
                    headers=["web tag"], datatype=["str"], label="Web tags", interactive=False, elem_id="tags"
                )
            table = gr.Dataframe(headers=["rank", "title", "id", "score"], label="Result list", interactive=False)
            with gr.Accordion("Search with an image", open=False):
                upload = gr.Image(type="pil", label="Upload an image", sources=["upload", "clipboard"])
                upload_button = gr.Button("Describe this image")
                upload_captions = gr.Dataframe(headers=["nearest caption", "image", "score"], interactive=False)
                similar = gr.Gallery(label="Similar images", columns=8, height="auto", allow_preview=False)
            search_button.click(app.search, [query, top_k], [results, table, hit_state], api_name="search")
            query.submit(app.search, [query, top_k], [results, table, hit_state], api_visibility="private")
            selected_similar = gr.Gallery(label="Visually similar", columns=8, height="auto", allow_preview=False)
            results.select(
                app.select_result,
                [hit_state],
                [captions, tags, selected_title, selected_similar],
                api_visibility="private",
            )
            upload_button.click(app.describe_upload, [upload], [upload_captions, similar], api_name="describe")
        with gr.Tab("Review tags", id="review") as review_tab:
            position = gr.State(0)
            ticked_state = gr.State([])
            with gr.Row():
                if OAUTH_ENABLED:
                    gr.LoginButton()
                    reviewer = gr.Textbox(visible=False, value="")
                else:
                    reviewer = gr.Textbox(label="Reviewer name", value=app.config.reviewer, max_length=100)
                counter = gr.Markdown()
            with gr.Row():
                review_image = gr.Image(label="Web image", interactive=False, height=280)
                with gr.Column():
                    review_title = gr.Textbox(label="Title", interactive=False)
                    review_detail = gr.Textbox(label="Why this image", interactive=False)
                    wrong = gr.CheckboxGroup(
                        label="Tick the tags that are WRONG (saved at once)", choices=[], elem_id="review-tags"
                    )
                    with gr.Row():
                        new_tag = gr.Textbox(label="Missing tag", placeholder="e.g. apple", scale=3, max_length=200)
                        add_button = gr.Button("Add tag")
                    with gr.Row():
                        next_button = gr.Button("Next image (unticked tags are right)", variant="primary")
                        skip_button = gr.Button("Skip")
            view = [review_image, review_title, review_detail, wrong, counter, ticked_state]
            controls = [wrong, add_button, next_button, skip_button]
            review_tab.select(app.open_review, [position, reviewer], [*view, *controls], api_visibility="private")
            demo.load(app.open_review, [position, reviewer], [*view, *controls], api_visibility="private")
            wrong.input(
                app.mark_tags,
                [position, wrong, ticked_state, reviewer],
                [ticked_state, counter],
                api_visibility="private",
            )
            add_button.click(app.add_tag, [position, new_tag, reviewer], [new_tag, counter], api_visibility="private")
            next_button.click(app.next_image, [position, wrong, reviewer], [position, *view], api_visibility="private")
            skip_button.click(app.skip, [position, reviewer], [position, *view], api_visibility="private")
        gr.api(app.vote_api, api_name="vote")
        gr.api(ping, api_name="ping")
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Image-text retrieval app (Gradio).")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="Hub repo id or local model folder")
    parser.add_argument("--gallery", default=DEFAULT_GALLERY, help="datasets source or gallery folder")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="votes database and index cache")
    parser.add_argument("--reviewer", default="local-reviewer", help="reviewer name when OAuth is off")
    parser.add_argument(
        "--index", default="auto", choices=("auto", "exact", "flat", "flat-fp16", "sq8", "hnsw", "ivfpq")
    )
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    return parser.parse_args(argv)


def create_demo(config: AppConfig) -> tuple[gr.Blocks, VSEApp]:
    app = VSEApp.create(config)
    demo = build_ui(app)
    demo.queue(default_concurrency_limit=CONCURRENCY)
    return demo, app


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args()
    demo, _ = create_demo(AppConfig(args.model, args.gallery, args.data_dir, args.reviewer, args.index))
    demo.launch(server_name=args.host, server_port=args.port)

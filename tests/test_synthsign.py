"""The SynthSign renderer: determinism, vocabulary, signers, glove colours and exact hand keypoints."""
import itertools

import numpy as np
import pytest

from t2s.config import Config
from t2s.synthsign import signer as ss
from t2s.synthsign.glosses import (
    ANCHORS,
    FILLER_WORDS,
    HANDEDNESS,
    PATHS,
    SHAPES,
    SYNONYMS,
    VOCABULARY,
    gloss_for,
    gloss_sequence,
    paraphrase,
    random_caption,
    tokenize,
)

PROMPTS = Config().sample_prompts
CAPTIONS = PROMPTS + ["please help me", "zebra quantum banana", "", "Hello, where IS anna?!", "work work work work work"]


def hand_masks(frame: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean (H, W) masks of the exact glove colours in an RGB uint8 frame."""
    return {hand: np.all(frame == np.array(colour, dtype=np.uint8), axis=-1) for hand, colour in ss.HAND_COLORS.items()}


def centroid(mask: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(mask)
    return np.array([cols.mean(), rows.mean()])


def test_hand_colors_are_the_documented_gloves():
    assert ss.HAND_COLORS == {"left": (255, 0, 200), "right": (0, 200, 255)}


@pytest.mark.parametrize("signer", range(12))
def test_no_drawn_colour_other_than_the_gloves_is_near_a_glove(signer):
    frames, _ = ss.render_clip("hello my name is anna", signer, 8, 64, seed=signer)
    colours = {tuple(c) for c in np.unique(frames.reshape(-1, 3), axis=0)}
    gloves = set(ss.HAND_COLORS.values())
    assert gloves <= colours  # both hands visible somewhere
    for colour in colours - gloves:
        for glove in gloves:
            assert ss.color_distance(colour, glove) >= ss.MIN_COLOR_DISTANCE, (colour, glove)
    for colour in ss.signer_appearance(signer).colors():
        assert min(ss.color_distance(colour, g) for g in gloves) >= 120


def test_vocabulary_has_at_least_30_glosses_and_every_prompt_word():
    assert len(VOCABULARY) >= 30
    for prompt in PROMPTS:
        for word in tokenize(prompt):
            assert word in VOCABULARY, word
    for word in ("hello", "my", "name", "is", "where", "train", "station", "thank", "you", "very", "much", "please", "help"):
        assert word in VOCABULARY


def test_every_gloss_has_its_own_definition_and_trajectory():
    glosses = list(VOCABULARY.values())
    assert len(set(glosses)) == len(glosses)
    for gloss in glosses:
        assert gloss.path in PATHS and gloss.anchor in ANCHORS and gloss.hands in HANDEDNESS
        assert set(gloss.shapes) <= set(SHAPES)
    trajectories = {w: ss.hand_trajectory(w, 0, 16, 64, seed=0) for w in VOCABULARY}
    for a, b in itertools.combinations(VOCABULARY, 2):
        (kp_a, shapes_a), (kp_b, shapes_b) = trajectories[a], trajectories[b]
        assert not np.array_equal(kp_a, kp_b) or shapes_a != shapes_b, (a, b)


def test_render_is_deterministic_from_the_seed():
    a_frames, a_kp = ss.render_clip("thank you very much", 3, 12, 48, seed=7)
    b_frames, b_kp = ss.render_clip("thank you very much", 3, 12, 48, seed=7)
    c_frames, c_kp = ss.render_clip("thank you very much", 3, 12, 48, seed=8)
    assert np.array_equal(a_frames, b_frames) and np.array_equal(a_kp, b_kp)
    assert not np.array_equal(a_kp, c_kp)  # the seed jitters the motion...
    assert np.abs(a_kp - c_kp).mean() < 6.0  # ...but only a little


@pytest.mark.parametrize("num_frames,image_size", [(1, 8), (8, 32), (12, 48), (16, 64), (5, 17)])
def test_render_shapes_and_types(num_frames, image_size):
    frames, keypoints = ss.render_clip("where is the train station", 1, num_frames, image_size)
    assert frames.shape == (num_frames, image_size, image_size, 3) and frames.dtype == np.uint8
    assert keypoints.shape == (num_frames, 2, 2) and keypoints.dtype == np.float32


@pytest.mark.parametrize("image_size", [8, 16, 32, 48, 64])
def test_keypoints_are_the_centroids_of_the_glove_pixels_in_every_frame(image_size):
    e, stamps = ss.hand_stamps(image_size)
    for caption, signer in itertools.product(CAPTIONS, range(0, 10, 3)):
        frames, keypoints = ss.render_clip(caption, signer, 10, image_size, seed=signer + 11)
        _, shapes = ss.hand_trajectory(caption, signer, 10, image_size, seed=signer + 11)
        for f, frame in enumerate(frames):
            masks = hand_masks(frame)
            for h, hand in enumerate(ss.HANDS):
                assert masks[hand].any(), (caption, signer, f, hand)
                # fully drawn: not clipped by the border, not hidden by anything
                assert masks[hand].sum() == stamps[shapes[f][h]].sum()
                assert np.abs(centroid(masks[hand]) - keypoints[f, h]).max() < 1e-6, (caption, signer, f, hand)


def test_hands_stay_in_their_half_and_inside_the_frame():
    for caption, signer in itertools.product(CAPTIONS, range(8)):
        keypoints, _ = ss.hand_trajectory(caption, signer, 16, 32, seed=signer)
        bounds = ss.hand_bounds(32)
        for h, hand in enumerate(ss.HANDS):
            x_min, x_max, y_min, y_max = bounds[hand]
            assert (keypoints[:, h, 0] >= x_min).all() and (keypoints[:, h, 0] <= x_max).all()
            assert (keypoints[:, h, 1] >= y_min).all() and (keypoints[:, h, 1] <= y_max).all()
        e, _ = ss.hand_stamps(32)
        assert (keypoints[:, 0, 0] + e < keypoints[:, 1, 0] - e).all()  # left pixels strictly left of right pixels


def test_at_least_8_signers_differ_in_appearance():
    looks = [ss.signer_appearance(s) for s in range(8)]
    for field in ("background", "skin", "shirt"):
        assert len({getattr(look, field) for look in looks}) == 8, field
    proportions = {(round(s.head_radius, 4), round(s.shoulder_half_width, 4), round(s.upper_arm, 4)) for s in looks}
    assert len(proportions) == 8
    bodies = [ss.render_clip("", s, 1, 32)[0][0] for s in range(8)]
    for a, b in itertools.combinations(range(8), 2):
        assert (bodies[a] != bodies[b]).any(axis=-1).mean() > 0.3, (a, b)  # most pixels differ


def test_signer_changes_appearance_and_body_relative_motion_but_not_the_gloves():
    a_frames, a_kp = ss.render_clip("hello my name is anna", 0, 8, 64)
    b_frames, b_kp = ss.render_clip("hello my name is anna", 5, 8, 64)
    assert not np.array_equal(a_frames, b_frames)
    assert np.abs(a_kp - b_kp).max() > 0  # proportions change where the hands go
    assert all(hand_masks(a_frames[0])[h].any() and hand_masks(b_frames[0])[h].any() for h in ss.HANDS)


def test_different_captions_give_different_motion():
    trajectories = [ss.hand_trajectory(p, 2, 16, 64, seed=0)[0] for p in PROMPTS + ["please help", "good morning"]]
    for a, b in itertools.combinations(trajectories, 2):
        assert np.linalg.norm(a - b, axis=-1).mean() > 2.0  # pixels, averaged over frames and hands


def test_unknown_words_map_deterministically_to_a_valid_fallback_gloss():
    gloss = gloss_for("zebra")
    assert gloss == gloss_for("ZEBRA") and "zebra" not in VOCABULARY
    assert gloss.path in PATHS and gloss.anchor in ANCHORS and gloss.hands in HANDEDNESS
    fallbacks = {gloss_for(w) for w in ("zebra", "quantum", "banana", "xylophone", "kettle", "orbit")}
    assert len(fallbacks) > 1
    a, _ = ss.render_clip("zebra quantum", 0, 8, 32)
    b, _ = ss.render_clip("zebra quantum", 0, 8, 32)
    assert np.array_equal(a, b)


def test_tokenize_lowercases_and_splits_on_punctuation():
    assert tokenize("Hello, my NAME is Anna!") == ["hello", "my", "name", "is", "anna"]
    assert tokenize("  ") == []


def test_random_captions_are_2_to_5_vocabulary_glosses():
    rng = np.random.default_rng(0)
    for _ in range(200):
        words = random_caption(rng).split()
        assert 2 <= len(words) <= 5 and all(w in VOCABULARY for w in words)


def test_signer_names_round_trip():
    assert ss.signer_name(3) == "signer03" and ss.signer_index("signer03") == 3
    assert ss.signer_index(ss.signer_name(123)) == 123
    with pytest.raises(ValueError, match="not of the form 'signer<number>'"):
        ss.signer_index("alice")


# ------------------------------------------------------------------------------------------------ words and glosses
def test_captions_render_exactly_as_before_the_synonym_table():
    """The digest of these renders was taken with the renderer before synonyms and filler words existed (commit
    bd3dffb): vocabulary captions, unknown words and the empty caption must not change."""
    import hashlib

    digest = hashlib.sha256()
    captions = ["hello my name is anna", "where is the train station", "thank you very much", "please help me",
                "zebra quantum banana", ""]
    for i, caption in enumerate(captions):
        for num_frames, image_size in ((8, 32), (16, 64)):
            frames, keypoints = ss.render_clip(caption, i, num_frames, image_size, seed=i)
            digest.update(frames.tobytes())
            digest.update(keypoints.tobytes())
    assert digest.hexdigest() == "6397f0fe7d576fe72730dab0c2daad9f768e617772c29aa6a1571142389669a2"


def test_synonyms_phrases_and_filler_words_sign_the_glosses_of_their_meaning():
    assert gloss_sequence("Thanks a lot!") == ["thank", "you", "very", "much"]
    assert gloss_sequence("um, hi! my name's Anna") == ["hello", "my", "name", "is", "anna"]
    assert gloss_sequence("where's the station for trains?") == ["where", "is", "the", "train", "station"]
    assert gloss_sequence("so much") == ["very", "much"] and gloss_sequence("so") == []
    assert gloss_sequence("zebra um quantum") == ["zebra", "quantum"]  # unknown words keep their fallback gloss
    for pair in (("thanks a lot", "thank you very much"), ("um, hi! my name's anna", "hello my name is anna"),
                 ("zebra um quantum", "zebra quantum")):
        a, b = (ss.render_clip(c, 4, 8, 32, seed=3) for c in pair)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]), pair


def test_a_caption_of_vocabulary_words_is_its_own_gloss_sequence():
    rng = np.random.default_rng(1)
    for caption in PROMPTS + [random_caption(rng) for _ in range(200)]:
        assert gloss_sequence(caption) == caption.split()
    for phrase, glosses in SYNONYMS.items():  # every table entry holds a word outside the vocabulary...
        assert any(w not in VOCABULARY for w in phrase.split()) and all(g in VOCABULARY for g in glosses)
        assert gloss_sequence(phrase) == list(glosses)
    assert not set(FILLER_WORDS) & set(VOCABULARY)  # ...and no filler word is a gloss


def test_paraphrases_change_the_words_keep_the_glosses_and_follow_the_generator():
    rng = np.random.default_rng(2)
    captions = PROMPTS + [random_caption(rng) for _ in range(100)]
    for caption in captions:
        reworded = paraphrase(caption, np.random.default_rng(7))
        assert tokenize(reworded) != tokenize(caption), caption
        assert gloss_sequence(reworded) == gloss_sequence(caption), (caption, reworded)
        assert reworded == paraphrase(caption, np.random.default_rng(7))  # deterministic given the generator
    wordings = {paraphrase("thank you very much", np.random.default_rng(s)) for s in range(40)}
    assert {"thanks so much", "um thanks a lot"} <= wordings and len(wordings) > 10
    with pytest.raises(ValueError, match="signs no gloss"):
        paraphrase("um", np.random.default_rng(0))


@pytest.mark.parametrize("num_frames", [4, 8, 16])
def test_frame_gloss_index_is_the_gloss_whose_shapes_each_frame_shows(num_frames):
    for caption in PROMPTS + ["good name", "work work work"]:
        glosses = [gloss_for(g) for g in gloss_sequence(caption)]
        which = ss.frame_gloss_index(len(glosses), num_frames)
        assert which[0] == 0 and which[-1] == len(glosses) - 1 and (np.diff(which) >= 0).all()
        _, shapes = ss.hand_trajectory(caption, 1, num_frames, 32, seed=0)
        assert shapes == [ss._gloss_shapes(glosses[g]) for g in which]
    # 8 frames show every gloss of a 2-5 gloss caption (the tiny scale's captions); 4 frames drop some of 5
    assert all(len(set(ss.frame_gloss_index(g, 8))) == g for g in range(1, 8))
    assert len(set(ss.frame_gloss_index(5, 4))) < 5

"""Bundled text sample that needs no network: short product/movie reviews in Korean, English and both, with emoji,
HTML, URLs and numbers, as a table with `text`, `label` (positive/neutral/negative) and `rating` (1-5).

Generated from phrase lists with a fixed seed, so every machine gets the same table; some reviews carry a phrase of
another sentiment, so the task is learnable but not trivial.
"""
import numpy as np
import pandas as pd

PHRASES = {
    "positive": ["정말 재미있어요", "최고의 영화", "배우들 연기가 훌륭해요", "또 보고 싶어요", "강력 추천합니다",
                 "감동적이었어요", "완전 만족", "가성비 최고", "loved it", "great acting", "highly recommend",
                 "a masterpiece", "worth every penny", "so much fun", "배송도 빠르고 좋아요", "😍", "👍", "❤️"],
    "negative": ["너무 지루해요", "시간 낭비", "최악의 영화", "다시는 안 봐요", "별로예요", "실망했어요",
                 "돈이 아까워요", "스토리가 엉망", "boring", "waste of time", "terrible plot", "never again",
                 "very disappointed", "broke after a week", "환불 원해요", "😡", "👎", "💤"],
    "neutral": ["그냥 그래요", "보통이에요", "나쁘지 않아요", "평범한 편", "괜찮은 편이에요", "기대만큼은 아님",
                "it was okay", "average", "nothing special", "not bad not great", "so-so", "🤔", "😐"],
}
FILLERS = ["오늘 친구랑 봤는데", "주말에 가족이랑", "어제 주문한 상품", "<b>리뷰</b>", "the movie", "the product",
           "배송은 3일 걸렸고", "price was 29,900원", "more at https://example.com/review?id=7", "문의: help@shop.co.kr",
           "2시간 10분", "솔직히 말하면", "honestly", "", "", ""]
RATINGS = {"positive": (4, 5), "neutral": (3, 3), "negative": (1, 2)}


def reviews(n: int = 1200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    labels = rng.choice(list(PHRASES), size=n, p=[0.4, 0.2, 0.4])
    texts, ratings = [], []
    for label in labels:
        words = [rng.choice(FILLERS)] + list(rng.choice(PHRASES[label], size=rng.integers(1, 4)))
        if rng.random() < 0.15:  # a mixed review
            other = rng.choice([k for k in PHRASES if k != label])
            words.append(rng.choice(PHRASES[other]))
        rng.shuffle(words)
        ending = rng.choice(["", "!", "!!", ".", " ㅋㅋ", " ㅠㅠ", "..."])
        texts.append((" ".join(w for w in words if w) + ending).strip())
        low, high = RATINGS[label]
        ratings.append(float(np.clip(rng.integers(low, high + 1) + rng.normal(0, 0.3), 1, 5)))
    return pd.DataFrame({"text": texts, "label": labels.astype(str), "rating": np.round(ratings, 2)})

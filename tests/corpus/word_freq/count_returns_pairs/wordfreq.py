from cleaning import words


def count_words(word_list):
    seen = []
    for word in word_list:
        if word not in seen:
            seen.append(word)
    return [(word, word_list.count(word)) for word in seen]


def top_words(text, n):
    pairs = count_words(words(text))
    pairs.sort(key=lambda item: (-item[1], item[0]))
    return pairs[:n]

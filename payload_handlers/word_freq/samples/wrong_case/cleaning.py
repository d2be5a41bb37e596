def words(text):
    # splits on spaces only: "Hello," and "hello" count as different words
    return text.split()
